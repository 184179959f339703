"""Every target's default pipeline, in one place."""
from __future__ import annotations

# integer-only-observe and integer-only do nothing unless option integer_only is set
QUANTIZE = (
    "canonicalize,fuse,methods,observe,integer-only-observe,calibrate,insert-qdq,integer-only,"
    "lower-int8,cleanup"
)

DEFAULT_PIPELINES: dict[str, str] = {
    "reference": QUANTIZE,
    "cpu-int8": QUANTIZE,
    "npu-int8": QUANTIZE,
    "cuda-int8": QUANTIZE,
}


def default_pipeline(target: str) -> str:
    return DEFAULT_PIPELINES[target]
