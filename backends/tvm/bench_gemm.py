"""GOP/s of the TVM int8 GEMM paths against torch, one thread (a script, not a test).

    python -m qcompile.backends.tvm.bench_gemm [--shapes 1024x384x384,128x384x1536] [--tile 6x4]

GOP = 2*M*N*K. Each number is the best of several timed rounds (the machine is shared).
TVM kernels are built with the requantize epilogue (qlinear) and the float one (qlinear_f32).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import torch  # noqa: E402

from qcompile.backends.tvm import cpu_features  # noqa: E402
from qcompile.backends.tvm.qlinear import build_qlinear, build_qlinear_f32  # noqa: E402

SHAPES = ((1024, 384, 384), (128, 384, 1536))


def best_seconds(fn, min_time: float = 0.2, rounds: int = 5) -> float:
    fn()
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if time.perf_counter() - t0 >= min_time / rounds or reps > 1 << 16:
            break
        reps *= 2
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def _operands(m: int, n: int, k: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    bias = torch.randint(-1000, 1000, (n,), dtype=torch.int32, generator=g)
    mult = torch.full((n,), 1 << 30, dtype=torch.int32)
    shift = torch.full((n,), 40, dtype=torch.int32)
    return x, w, bias, mult, shift


def _tvm_rows(m, n, k, tile):
    x, w, bias, mult, shift = _operands(m, n, k)
    rows = []
    for path in cpu_features.detect().paths():
        kern = build_qlinear(w, 3, bias, mult, shift, -5, -128, 127, path=path, tile=tile)
        rows.append((f"tvm {path} int8-out {kern.spec.mr}x{kern.spec.nv}",
                     best_seconds(lambda: kern(x))))
        kf = build_qlinear_f32(w, 3, bias.float(), torch.full((n,), 1e-3), path=path, tile=tile)
        rows.append((f"tvm {path} f32-out", best_seconds(lambda: kf(x))))
    return rows


def _torch_rows(m, n, k):
    x, w, _, _, _ = _operands(m, n, k)
    xf, wf = x.float(), w.float().t().contiguous()
    rows = [("torch fp32 matmul", best_seconds(lambda: torch.matmul(xf, wf)))]
    wt = w.t().contiguous()
    try:
        torch._int_mm(x, wt)
        rows.append(("torch._int_mm", best_seconds(lambda: torch._int_mm(x, wt))))
    except RuntimeError as err:
        rows.append((f"torch._int_mm unavailable: {str(err).splitlines()[0][:60]}", None))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    parser.add_argument("--tile", default=None, help="MRxNV register tile, e.g. 6x4")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tile = tuple(int(v) for v in args.tile.split("x")) if args.tile else None
    feats = cpu_features.detect()
    print(f"cpu paths: {', '.join(feats.paths())}; amx: {feats.amx}; 1 thread")
    for shape in args.shapes.split(","):
        m, n, k = (int(v) for v in shape.split("x"))
        print(f"\n(M, N, K) = ({m}, {n}, {k})")
        for name, sec in _torch_rows(m, n, k) + _tvm_rows(m, n, k, tile):
            speed = "" if sec is None else f"{2 * m * n * k / sec / 1e9:8.1f} GOP/s"
            print(f"  {name:<40s}{speed}")


if __name__ == "__main__":
    main()
