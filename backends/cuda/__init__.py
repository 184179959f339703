"""cuda-int8: an engine of hand-written CUDA kernels, compiled with NVRTC, checked without a GPU."""
