"""Who runs the engine's kernels: the CPU emulation of the kernel source, or the GPU.

An executor maps an engine kernel (a plan Step, its tactic and the node's arguments, exactly
those of the qcompile op) to an output tensor. The emulated executor runs the very source
NVRTC compiles, through g++ (emulator.py); the GPU executor launches the cubin (gpu.py).
A cross-built engine (built for an architecture with no GPU here) has no executor that can
run it, and says so when called.
"""
from __future__ import annotations

from qcompile.errors import BackendError

from .plan import Step


def _emulated_kernels() -> dict:
    from . import emulator, emulator_ops as ops
    by_args = {"qc_requantize": ops.requantize_emulated, "qc_qadd": ops.qadd_emulated,
               "qc_qclamp": ops.qclamp_emulated, "qc_quantize": ops.quantize_emulated,
               "qc_dequantize": ops.dequantize_emulated, "qc_qmax_pool2d": ops.qmax_pool2d_emulated,
               "qc_qavg_pool2d": ops.qavg_pool2d_emulated, "qc_qmean": ops.qmean_emulated}
    from . import emulator_transformer as tr
    from .emulator_conv import conv2d_int8_emulated
    by_args.update({"qc_conv2d_int8_implicit": conv2d_int8_emulated,
                    "qc_depthwise_conv2d_int8": conv2d_int8_emulated,
                    "qc_qmatmul_int8": tr.qmatmul_emulated,
                    "qc_qmatmul_int8_simt": tr.qmatmul_emulated,
                    "qc_i_linear": tr.i_linear_emulated, "qc_i_linear_simt": tr.i_linear_emulated,
                    "qc_i_softmax": tr.i_softmax_emulated,
                    "qc_i_layernorm": tr.i_layernorm_emulated, "qc_i_gelu": tr.i_gelu_emulated,
                    "qc_i_add": tr.i_add_emulated})
    kernels = {name: (lambda fn: lambda tile, args, kwargs: fn(*args, **kwargs))(fn)
               for name, fn in by_args.items()}
    kernels["gemm_int8"] = lambda tile, args, kwargs: emulator.gemm_int8_emulated(
        *args, **kwargs, tile=tile)
    return kernels


class EmulatedExecutor:
    """The engine's kernels run on the CPU through the emulation layer (slow; exact)."""

    name = "emulated"

    def __init__(self):
        self.kernels = _emulated_kernels()

    def run(self, step: Step, tile: str | None, args: tuple, kwargs: dict | None = None):
        return self.kernels[step.kernel](tile, args, kwargs or {})


class CrossBuiltExecutor:
    """An engine built for `arch` on a machine without that GPU: it loads, it cannot run."""

    name = "cross-built"

    def __init__(self, arch: str, reason: str):
        self.arch, self.reason = arch, reason

    def run(self, step: Step, tile: str | None, args: tuple, kwargs: dict | None = None):
        raise BackendError(f"this engine was built for {self.arch} and needs that GPU to run "
                           f"({self.reason}); load it on a {self.arch} GPU, or compile with "
                           "options={'emulate': True} to run its kernels on the CPU")
