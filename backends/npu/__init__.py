"""npu-int8: integer-only models emitted as standalone C (TVM C kernels, own driver and arena)."""
