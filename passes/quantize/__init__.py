"""Quantize: observe, calibrate, insert quantize/dequantize from the recipe."""
from . import awq, calibrate, cast_lowp, gptq, insert_qdq, observe, smooth_quant  # noqa: F401

from qcompile.registry import register_group  # noqa: E402

register_group("methods", ("cast-lowp", "smooth-quant", "awq", "gptq"))
