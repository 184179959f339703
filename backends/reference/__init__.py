"""The reference backend: runs the lowered graph with the qcompile reference kernels."""
from .backend import build  # noqa: F401
