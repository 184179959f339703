"""Lower: quantize/dequantize patterns -> integer ops of the qcompile namespace."""
from . import cleanup, lower_int8  # noqa: F401
