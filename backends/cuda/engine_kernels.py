"""The engine's kernels, compiled with NVRTC for one architecture (cubin) plus PTX.

Every engine kernel lives in kernels/*.cuh; `ENGINE_SOURCE` includes them all, so one NVRTC
program gives one cubin per architecture holding every kernel (`extern "C"` names, so the
launcher finds them without name mangling). The same files compile with g++ for emulation
(emulator.py). Budgets are what every kernel must meet on every architecture; CI checks them
from ptxas's report and the SASS (tests/test_cuda_kernels_sass.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import nvrtc

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
ENGINE_SOURCE = "".join(f'#include "{name}"\n' for name in (
    "gemm_int8.cuh", "conv_int8.cuh", "elementwise.cuh", "pool.cuh", "transformer.cuh"))
PROGRAM = "qcompile_engine"


@dataclass(frozen=True)
class KernelSpec:
    name: str
    threads: int                 # block size the kernel is launched with
    expect: tuple[str, ...]      # SASS instructions it must contain
    max_registers: int           # per thread: 65536 / threads leaves room for one block
    max_shared: int              # static shared memory bytes


KERNELS = {
    "qc_gemm_int8_64x64": KernelSpec("qc_gemm_int8_64x64", 128, ("IMMA", "LDSM", "LDGSTS"),
                                     168, 48 * 1024),
    "qc_gemm_int8_128x128": KernelSpec("qc_gemm_int8_128x128", 256, ("IMMA", "LDSM", "LDGSTS"),
                                       255, 48 * 1024),
    "qc_conv2d_int8_implicit": KernelSpec("qc_conv2d_int8_implicit", 128,
                                          ("IMMA", "LDSM", "LDGSTS"), 168, 48 * 1024),
    "qc_depthwise_conv2d_int8": KernelSpec("qc_depthwise_conv2d_int8", 256, (), 64, 0),
    **{name: KernelSpec(name, 256, (), 64, 0) for name in (
        "qc_requantize", "qc_qadd", "qc_qclamp", "qc_quantize", "qc_dequantize",
        "qc_qmax_pool2d", "qc_qavg_pool2d")},
    "qc_qmean": KernelSpec("qc_qmean", 256, ("BAR",), 64, 2048),
    **{name: KernelSpec(name, 128, ("IMMA", "LDSM", "LDGSTS"), 168, 48 * 1024)
       for name in ("qc_qmatmul_int8", "qc_i_linear")},
    **{name: KernelSpec(name, 256, (), 64, 4096)
       for name in ("qc_qmatmul_int8_simt", "qc_i_linear_simt")},
    **{name: KernelSpec(name, 128, ("SHFL",), 64, 1024) for name in ("qc_i_softmax",
                                                                     "qc_i_layernorm")},
    **{name: KernelSpec(name, 256, (), 64, 0) for name in ("qc_i_gelu", "qc_i_add")},
}
GEMM_TILES = {"64x64": "qc_gemm_int8_64x64", "128x128": "qc_gemm_int8_128x128"}


def compile_engine(arch: str, cache_dir=None) -> nvrtc.CompiledKernel:
    """The engine program as a cubin for `arch` (cached on disk by nvrtc)."""
    return nvrtc.compile_kernel(ENGINE_SOURCE, PROGRAM, arch, include_dirs=(str(KERNEL_DIR),),
                                cache_dir=cache_dir)


def compile_engine_ptx(cache_dir=None) -> nvrtc.CompiledKernel:
    """The engine program as compute_80 PTX, which newer GPUs compile at load time."""
    return nvrtc.compile_ptx(ENGINE_SOURCE, PROGRAM, include_dirs=(str(KERNEL_DIR),),
                             cache_dir=cache_dir)
