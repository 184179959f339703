"""Canonicalize: one spelling per op, attention split, constants and BatchNorm folded."""
from qcompile.registry import register_group

from . import dead_code, decompose_attention, fold_batchnorm, fold_constants, normalize_ops  # noqa: F401

register_group("canonicalize", ("normalize-ops", "decompose-attention", "fold-constants",
                                "fold-batchnorm", "dead-code"))
