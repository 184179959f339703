"""Saved artifacts: one versioned, checksummed file; no pickle, no code execution on load."""
from .container import FORMAT_VERSION, read_container, write_container  # noqa: F401
from .save_load import load_compiled, save_compiled  # noqa: F401
