"""What machine and versions a benchmark ran on, for its results file."""
from __future__ import annotations

import datetime
import os
import platform
import sys

SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "fma")


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in SIMD_FLAGS if flag in present]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    import torch

    import qcompile
    found = {"python": platform.python_version(), "torch": torch.__version__,
             "qcompile": qcompile.__version__}
    for name in ("numpy", "onnxruntime", "torchao", "transformers"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except Exception:  # noqa: BLE001 - an optional package may fail to import
            found[name] = "not installed"
    return found


def machine_info(argv: list[str] | None = None) -> dict:
    import torch
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_model(), "cores": os.cpu_count(), "simd": cpu_flags(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "versions": versions(), "command": " ".join(argv if argv is not None else sys.argv)}
