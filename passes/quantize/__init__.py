"""Quantize: observe, calibrate, insert quantize/dequantize from the recipe."""
from . import awq, calibrate, gptq, insert_qdq, observe, smooth_quant  # noqa: F401
