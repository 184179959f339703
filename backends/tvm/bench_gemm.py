"""GOP/s of the TVM int8 GEMM paths against torch at 1..T threads (a script, not a test).

    python -m qcompile.backends.tvm.bench_gemm [--threads 1,2] [--shapes 1024x384x384,...]
        [--paths avx512-vnni,avx2] [--tile 6x4] [--rounds 15] [--sample-ms 10] [--raw]

GOP = 2*M*N*K. Every (variant, thread count) pair is timed in each round, interleaved (the
machine is shared: a burst of load hits all variants alike), and each number is the best of
the rounds, followed by the median as a noise indicator. TVM kernels are built with the
requantize epilogue (qlinear) and the float one (qlinear_f32); --raw also times the compiled
function alone (no torch output allocation, DLPack or reshapes: the Relax VM's view).
TVM's pool is created with max(threads) workers (TVM_NUM_THREADS) and `config_threadpool`
picks the count per round; torch uses torch.set_num_threads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import tvm

from qcompile.backends.tvm import cpu_features
from qcompile.backends.tvm.qlinear import build_qlinear, build_qlinear_f32

SHAPES = ((1024, 384, 384), (128, 384, 1536), (8, 384, 384), (49, 512, 4608))
SETTLE_S = 0.05  # pause when the timed runtime changes (see measure)


def reps_for(fn, min_time: float) -> int:
    """Calls per timed sample, so that one sample takes about min_time seconds."""
    fn()
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if time.perf_counter() - t0 >= min_time or reps > 1 << 16:
            return reps
        reps *= 2


def sample(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    tvm.get_global_func("runtime.config_threadpool")(1, n)  # 1: default ("big") cores


def _operands(m: int, n: int, k: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    bias = torch.randint(-1000, 1000, (n,), dtype=torch.int32, generator=g)
    mult = torch.full((n,), 1 << 30, dtype=torch.int32)
    shift = torch.full((n,), 40, dtype=torch.int32)
    return x, w, bias, mult, shift


def _raw_call(kern, x):
    """The compiled function with its tensors wrapped once: what a Relax VM call costs."""
    y = torch.empty((x.shape[0], kern.spec.n), dtype=kern.out_dtype)
    args = [tvm.runtime.from_dlpack(x), *kern.constants, tvm.runtime.from_dlpack(y)]
    return lambda: kern.func(*args)


def tvm_variants(m, n, k, tile, raw: bool, paths: list) -> dict:
    x, w, bias, mult, shift = _operands(m, n, k)
    out = {}
    for path in paths:
        ki = build_qlinear(w, 3, bias, mult, shift, -5, -128, 127, path=path, tile=tile)
        kf = build_qlinear_f32(w, 3, bias.float(), torch.full((n,), 1e-3), path=path, tile=tile)
        out[f"tvm {path} int8-out {ki.spec.mr}x{ki.spec.nv}"] = lambda ki=ki: ki(x)
        out[f"tvm {path} f32-out"] = lambda kf=kf: kf(x)
        if raw:
            out[f"tvm {path} int8-out (raw call)"] = _raw_call(ki, x)
    return out


def torch_variants(m, n, k) -> dict:
    x, w, _, _, _ = _operands(m, n, k)
    xf, wf, wt = x.float(), w.float().t().contiguous(), w.t().contiguous()
    out = {"torch fp32 matmul": lambda: torch.matmul(xf, wf)}
    try:
        torch._int_mm(x, wt)
        out["torch._int_mm"] = lambda: torch._int_mm(x, wt)
    except RuntimeError:  # e.g. shapes it does not take (M <= 16 on some builds)
        pass
    return out


def _runtime(name: str) -> str:
    return name.split()[0]  # "torch" or "tvm"


def measure(variants: dict, threads: list, rounds: int, sample_s: float) -> dict:
    """(name, threads) -> seconds of every round, the pairs interleaved within each round.

    Idle pool threads keep spinning for a while after a parallel call (torch's OpenMP, TVM's
    pool): switching between the two runtimes first waits SETTLE_S so that the spinning
    threads of one do not steal the second core from the other's first sample.
    """
    reps = {}
    for t in threads:
        set_threads(t)
        reps.update({(name, t): reps_for(fn, sample_s) for name, fn in variants.items()})
    times = {key: [] for key in reps}
    last = None
    for _ in range(rounds):
        for t in threads:
            set_threads(t)
            for name, fn in variants.items():
                if _runtime(name) != last:
                    time.sleep(SETTLE_S)
                    last = _runtime(name)
                times[name, t].append(sample(fn, reps[name, t]))
    return times


def report(shape, times: dict, threads: list) -> None:
    m, n, k = shape
    gop = 2 * m * n * k / 1e9
    print(f"\n(M, N, K) = ({m}, {n}, {k}); GOP/s best (median) of the rounds; us = best")
    for name in dict.fromkeys(name for name, _ in times):
        cells = []
        for t in threads:
            ts = times[name, t]
            cells.append(f"T={t}: {gop / min(ts):7.1f} ({gop / statistics.median(ts):7.1f}) "
                         f"{min(ts) * 1e6:8.1f} us")
        print(f"  {name:<36s}" + "   ".join(cells))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1", help="comma-separated thread counts")
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    parser.add_argument("--tile", default=None, help="MRxNV register tile, e.g. 6x4")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sample-ms", type=float, default=10, help="length of one sample")
    parser.add_argument("--raw", action="store_true", help="also time the bare compiled call")
    parser.add_argument("--paths", default=None, help="comma-separated ISA paths (default: all)")
    args = parser.parse_args(argv)
    tile = tuple(int(v) for v in args.tile.split("x")) if args.tile else None
    threads = [int(v) for v in args.threads.split(",")]
    # read when TVM creates its pool (the first parallel call): config_threadpool only lowers it
    os.environ.setdefault("TVM_NUM_THREADS", str(max(threads)))
    feats = cpu_features.detect()
    paths = args.paths.split(",") if args.paths else feats.paths()
    print(f"cpu paths: {', '.join(feats.paths())}; amx: {feats.amx}; threads {threads}; "
          f"TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}; {os.cpu_count()} cpus")
    for shape in args.shapes.split(","):
        m, n, k = (int(v) for v in shape.split("x"))
        variants = {**torch_variants(m, n, k), **tvm_variants(m, n, k, tile, args.raw, paths)}
        report((m, n, k), measure(variants, threads, args.rounds, args.sample_ms / 1e3), threads)


if __name__ == "__main__":
    main()
