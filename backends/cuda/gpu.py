"""The GPU executor: the engine's cubin loaded with cuda-core, kernels launched on a stream.

The torch of this project is a CPU build, so tensors live on the host: each engine kernel
copies its activations to the device, launches, and copies the result back; weights and
per-channel parameters are uploaded once and kept. (Device-resident activations between
kernels, with the lifetime plan, are the next step.) Tactic timing uses CUDA events.
"""
from __future__ import annotations

import numpy as np
import torch

from .engine_kernels import GEMM_TILES, KERNELS

_NULL = np.uint64(0)


class GpuExecutor:
    name = "gpu"

    def __init__(self, cubin: bytes):
        from cuda.core import Device, ObjectCode
        self.device = Device(0)
        self.device.set_current()
        self.stream = self.device.create_stream()
        self.module = ObjectCode.from_cubin(cubin)
        self._resident: dict[int, object] = {}

    def _upload(self, t: torch.Tensor):
        from cuda.bindings import driver
        t = t.contiguous()
        buffer = self.device.allocate(max(t.numel() * t.element_size(), 1), stream=self.stream)
        self.stream.sync()
        driver.cuMemcpyHtoD(int(buffer.handle), t.data_ptr(), t.numel() * t.element_size())
        return buffer

    def _constant(self, t: torch.Tensor | None):
        """Weights and per-channel parameters: uploaded the first time they are seen."""
        if t is None:
            return _NULL
        key = id(t)
        if key not in self._resident:
            self._resident[key] = (self._upload(t), t)   # keep t alive: ids stay unique
        return self._resident[key][0]

    def _download(self, buffer, shape, dtype) -> torch.Tensor:
        from cuda.bindings import driver
        out = torch.empty(shape, dtype=dtype)
        self.stream.sync()
        driver.cuMemcpyDtoH(out.data_ptr(), int(buffer.handle), out.numel() * out.element_size())
        return out

    def _gemm_launch(self, tile: str, x2, w, bias, mult, shift, y, scalars):
        from cuda.core import LaunchConfig, launch
        name = GEMM_TILES[tile]
        block_m, block_n = (int(d) for d in tile.split("x"))
        m, n = scalars[0], scalars[1]
        config = LaunchConfig(grid=((n + block_n - 1) // block_n, (m + block_m - 1) // block_m),
                              block=KERNELS[name].threads)
        launch(self.stream, config, self.module.get_kernel(name), x2, self._constant(w),
               self._constant(bias), self._constant(mult), self._constant(shift), y,
               *(np.int32(v) for v in scalars))

    def gemm(self, tile: str, x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax):
        k = w.shape[1]
        x2 = x.reshape(-1, k)
        m, n = x2.shape[0], w.shape[0]
        x_dev = self._upload(x2)
        y_dev = self.device.allocate(m * n, stream=self.stream)
        scalars = (m, n, k, int(x_zp), int(out_zp), int(qmin), int(qmax))
        self._gemm_launch(tile, x_dev, w, bias, multiplier, shift, y_dev, scalars)
        return self._download(y_dev, (*x.shape[:-1], n), torch.int8)

    def run(self, step, tile, args, kwargs=None):
        """The GEMM on the GPU; kernels without a GPU launcher yet run the op's reference
        kernel on the host (same integers)."""
        if step.kernel == "gemm_int8" and not kwargs:
            return self.gemm(tile, *args)
        return getattr(torch.ops.qcompile, step.op)(*args, **(kwargs or {}))

    def time_gemm(self, tile: str, shape: tuple[int, int, int], repeats: int = 20) -> float:
        """Microseconds per launch of the `tile` GEMM on random operands of `shape`."""
        from cuda.core import EventOptions
        m, n, k = shape
        g = torch.Generator().manual_seed(0)
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        ones = torch.full((n,), 2**30, dtype=torch.int32)
        shifts = torch.full((n,), 40, dtype=torch.int32)
        x_dev, y_dev = self._upload(x), self.device.allocate(m * n, stream=self.stream)
        scalars = (m, n, k, 0, 0, -128, 127)
        self._gemm_launch(tile, x_dev, w, None, ones, shifts, y_dev, scalars)   # warm up
        timing = EventOptions(enable_timing=True)
        start = self.stream.record(options=timing)
        for _ in range(repeats):
            self._gemm_launch(tile, x_dev, w, None, ones, shifts, y_dev, scalars)
        end = self.stream.record(options=timing)
        end.sync()
        return (end - start) * 1000.0 / repeats
