"""Quantize: observe, calibrate, insert quantize/dequantize from the recipe."""
from . import (awq, calibrate, cast_fp8, cast_lowp, fake_quant, gptq, insert_qdq,  # noqa: F401
               observe, smooth_quant)

from qcompile.registry import register_group  # noqa: E402

register_group("methods", ("cast-lowp", "cast-fp8", "smooth-quant", "awq", "gptq"))
