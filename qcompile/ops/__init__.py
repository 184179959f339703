"""The `qcompile::` op namespace; importing this package registers the torch ops."""
from qcompile.ops import kv_cache, library, reference  # noqa: F401
from qcompile.ops.library import OP_NAMES, OPS

__all__ = ["OP_NAMES", "OPS", "library", "reference"]
