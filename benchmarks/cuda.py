"""cuda-int8 on a GPU: the engine's int8 GEMM against torch, and engine build times.

    python benchmarks/cuda.py [--repeats 50] [--results benchmarks/results/cuda]

GEMM shapes (M, N, K): MiniLM batch 8 (1024x1536x384, 1024x384x1536), square 4096 and LLM
decode (16x4096x4096). Each row: our kernel with each tile and the best, in TOPS, beside
`torch._int_mm` (cuBLASLt int8) and an fp16 matmul when this torch has CUDA; ratios, not
absolute times, are what compare across runs. Also the engine build time of the MLP and
CNN test models, cold (empty caches) and warm.

Without a usable GPU it prints why and writes nothing: these numbers are measured, never
estimated.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# run as a script, this file's folder comes first on sys.path, where "cuda" would be this
# file and not NVIDIA's package (torch's import already asks for it): drop it first
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from benchmarks.machine import machine_info  # noqa: E402

SHAPES = ((1024, 1536, 384), (1024, 384, 1536), (4096, 4096, 4096), (16, 4096, 4096))


def _tops(shape, microseconds: float) -> float:
    m, n, k = shape
    return 2.0 * m * n * k / (microseconds * 1e-6) / 1e12


def _torch_cuda_us(shape, repeats: int) -> dict:
    """torch._int_mm and fp16 matmul microseconds, when this torch build has CUDA."""
    if not torch.cuda.is_available():
        return {"note": "this torch has no CUDA (CPU build): torch rows not measured"}
    m, n, k = shape
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8, device="cuda")
    out = {}
    for name, fn in (("torch._int_mm", lambda: torch._int_mm(a, b)),
                     ("torch fp16 matmul", lambda: a.half() @ b.half())):
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
        out[name] = (time.perf_counter() - start) * 1e6 / repeats
    return out


def gemm_rows(repeats: int) -> list[dict]:
    from qcompile.backends.cuda.device import probe
    from qcompile.backends.cuda.engine_kernels import compile_engine
    from qcompile.backends.cuda.gpu import GpuExecutor
    from qcompile.backends.cuda.tactics import TILES
    executor = GpuExecutor(compile_engine(probe().arch).cubin)
    rows = []
    for shape in SHAPES:
        ours = {tile: executor.time_gemm(tile, shape, repeats) for tile in TILES}
        best = min(ours.values())
        row = {"shape": shape, "ours_us": ours, "ours_tops": _tops(shape, best)}
        theirs = _torch_cuda_us(shape, repeats)
        for name, us in theirs.items():
            if name != "note":
                row[f"{name} tops"] = _tops(shape, us)
                row[f"ours / {name}"] = us / best
        row["note"] = theirs.get("note", "")
        rows.append(row)
    return rows


def build_times() -> dict:
    """Engine build of a small CNN, cold (fresh caches) and warm."""
    import qcompile
    from torch import nn
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(32 * 8 * 8, 64)).eval()
    x = torch.randn(2, 16, 8, 8)
    times = {}
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold", "warm"):
            start = time.perf_counter()
            qcompile.compile(model, target="cuda-int8", example_inputs=x,
                             options={"cache_dir": cache, "progress": False})
            times[label] = time.perf_counter() - start
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--results", default="benchmarks/results/cuda")
    args = parser.parse_args(argv)
    from qcompile.backends.cuda.device import probe
    gpu = probe()
    if not gpu.present:
        print(f"cuda benchmark not run: {gpu.reason}")
        return 2
    result = {"machine": machine_info(argv), "gpu": f"{gpu.name} ({gpu.arch})",
              "gemm": gemm_rows(args.repeats), "build_s": build_times()}
    Path(args.results + ".json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
