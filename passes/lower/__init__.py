"""Lower: quantize/dequantize patterns -> integer ops of the qcompile namespace."""
from . import cleanup, integer_only, integer_only_observe, lower_int8  # noqa: F401
