"""Every target's default pipeline, in one place."""
from __future__ import annotations

QUANTIZE = "canonicalize,fuse,methods,observe,calibrate,insert-qdq,lower-int8,cleanup"

DEFAULT_PIPELINES: dict[str, str] = {
    "reference": QUANTIZE,
    "cpu-int8": QUANTIZE,
    "npu-int8": QUANTIZE,
    "cuda-int8": QUANTIZE,
}


def default_pipeline(target: str) -> str:
    return DEFAULT_PIPELINES[target]
