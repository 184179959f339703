"""Fuse: mark conv/linear/add + activation groups that a target runs as one kernel."""
from . import fuse  # noqa: F401
