"""Built-in passes. Importing this package registers them all."""
from . import canonicalize, fuse, lower, quantize  # noqa: F401
