"""cpu-int8 backend: TVM-generated exact int8 kernels, one compiled library per model.

Importing this package does not import tvm; the kernel builders do, on first use. TVM sizes
its thread pool from TVM_NUM_THREADS when it first runs parallel code (without it, half the
CPUs: one thread on a 2-vCPU machine); unless the user set it, it follows torch's count.
"""
import os as _os

if "TVM_NUM_THREADS" not in _os.environ:
    import torch as _torch

    _os.environ["TVM_NUM_THREADS"] = str(max(_torch.get_num_threads(), 1))
