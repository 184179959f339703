"""Quantize: observe, calibrate, insert quantize/dequantize from the recipe."""
from . import (awq, bias_correction, calibrate, cast_fp8, cast_lowp, equalize,  # noqa: F401
               fake_quant, gptq, insert_qdq, kv_cache, observe, smooth_quant)

from qcompile.registry import register_group  # noqa: E402

register_group("methods", ("equalize", "cast-lowp", "cast-fp8", "smooth-quant", "awq", "gptq",
                           "bias-correction", "quantize-kv-cache"))
