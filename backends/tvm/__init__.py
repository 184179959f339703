"""cpu-int8 backend pieces generated with apache-tvm 0.27 (exact int8 GEMM kernels so far).

Importing this package does not import tvm; the kernel builders do, on first use.
"""
