"""The engine's plan: which engine kernel computes each node of the lowered graph.

Rules are data: `KERNEL_RULES` maps a qcompile op to a function that returns the engine
kernel for that node, or raises `Unsupported` with the reason it runs in torch instead.
Every fallback is kept with its reason (the report lists them); with fallback off the first
one is a BackendError naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from qcompile.errors import BackendError
from qcompile.facts import facts_of
from qcompile.kernels import compute_nodes
from qcompile.op_kinds import is_qcompile_op

GEMM_K_ALIGN = 16          # cp.async moves 16 bytes: K rows of int8 must be 16-byte multiples


class Unsupported(Exception):
    """This node has no engine kernel; the message says why."""


@dataclass(frozen=True)
class Step:
    node: str
    op: str
    kernel: str | None            # engine kernel, None: runs in torch (reference kernel)
    reason: str = ""              # why it runs in torch (or how the kernel takes it)
    gemm: tuple[int, int, int] | None = None  # (M, N, K) of a GEMM step


def _op(node: fx.Node) -> str:
    if is_qcompile_op(node):
        return node.target._opname
    return getattr(node.target, "__name__", str(node.target))


def _shape(node) -> tuple[int, ...]:
    info = facts_of(node).tensor if isinstance(node, fx.Node) else None
    if info is None:
        raise Unsupported(f"no recorded shape for {getattr(node, 'name', node)}")
    return tuple(info.shape)


def gemm_shape(node: fx.Node) -> tuple[int, int, int]:
    """(M, N, K) of a qlinear: M = every leading dim of x flattened."""
    x_shape, out_shape = _shape(node.args[0]), _shape(node)
    m = 1
    for d in x_shape[:-1]:
        m *= d
    return m, out_shape[-1], x_shape[-1]


def _qlinear_rule(node: fx.Node) -> Step:
    m, n, k = gemm_shape(node)
    if k % GEMM_K_ALIGN:
        raise Unsupported(f"K={k} is not a multiple of {GEMM_K_ALIGN} (16-byte cp.async rows)")
    return Step(node.name, "qlinear", "gemm_int8", gemm=(m, n, k))


def _elementwise_rule(node: fx.Node) -> Step:
    op = _op(node)
    return Step(node.name, op, f"qc_{op}")


def _qadd_rule(node: fx.Node) -> Step:
    a, b = _shape(node.args[0]), _shape(node.args[3])
    if a != b:
        raise Unsupported(f"qadd of shapes {list(a)} and {list(b)} broadcasts; the engine's "
                          "kernel adds same-shape tensors")
    return Step(node.name, "qadd", "qc_qadd")


def _pool_rule(node: fx.Node) -> Step:
    if len(_shape(node.args[0])) != 4:
        raise Unsupported("the pooling kernels take NCHW tensors")
    return _elementwise_rule(node)


def _qmean_rule(node: fx.Node) -> Step:
    rank = len(_shape(node.args[0]))
    dims = sorted(d % rank for d in node.args[2])
    if dims != list(range(rank - len(dims), rank)):
        raise Unsupported(f"qmean over dims {list(node.args[2])}: the kernel reduces trailing "
                          "dims only")
    return Step(node.name, "qmean", "qc_qmean")


def _qconv2d_rule(node: fx.Node) -> Step:
    from .emulator_conv import conv2d_kernel_for
    kernel, why = conv2d_kernel_for(_shape(node.args[0]), _shape(node.args[2]), node.args[12])
    if kernel is None:
        raise Unsupported(why)
    return Step(node.name, "qconv2d", kernel, reason=why)


def _tensor_shapes(node: fx.Node) -> list:
    shapes = [_shape(a) for a in node.args if isinstance(a, fx.Node)]
    if _op(node) == "i_softmax" and len(shapes) == 1:
        shapes.append(None)                          # no mask
    return shapes


def _transformer_rule(node: fx.Node) -> Step:
    from .emulator_transformer import transformer_kernel_for
    op = _op(node)
    dim = node.kwargs.get("dim", node.args[9] if op == "i_softmax" and len(node.args) > 9
                          else -1)
    kernel, why = transformer_kernel_for(op, _tensor_shapes(node), dim)
    if kernel is None:
        raise Unsupported(why)
    return Step(node.name, op, kernel, reason=why)


TRANSFORMER_OPS = ("qmatmul", "i_softmax", "i_layernorm", "i_gelu", "i_linear", "i_add")

KERNEL_RULES = {**{op: _transformer_rule for op in TRANSFORMER_OPS},
                "qlinear": _qlinear_rule, "qconv2d": _qconv2d_rule, "requantize": _elementwise_rule,
                "qclamp": _elementwise_rule, "quantize": _elementwise_rule,
                "dequantize": _elementwise_rule, "qadd": _qadd_rule,
                "qmax_pool2d": _pool_rule, "qavg_pool2d": _pool_rule, "qmean": _qmean_rule}


def _fallback_reason(op: str) -> str:
    return f"no engine kernel for {op} in this version; it runs its reference kernel in torch"


def plan_engine(gm: fx.GraphModule, fallback: bool = True) -> list[Step]:
    """One Step per compute node, in graph order."""
    steps = []
    for node in compute_nodes(gm):
        op = _op(node)
        rule = KERNEL_RULES.get(op)
        try:
            if rule is None:
                raise Unsupported(_fallback_reason(op))
            steps.append(rule(node))
        except Unsupported as why:
            if not fallback:
                raise BackendError(f"cuda-int8 cannot run {op}: {why}", node=node) from None
            steps.append(Step(node.name, op, None, str(why)))
    return steps


def fallbacks(steps: list[Step]) -> list[tuple[str, str, str]]:
    """(node, op, reason) of every step that runs in torch."""
    return [(s.node, s.op, s.reason) for s in steps if s.kernel is None]


def kernel_notes(steps: list[Step]) -> list[tuple[str, str, str]]:
    """(node, kernel, note) of engine steps whose kernel says how it takes the node."""
    return [(s.node, s.kernel, s.reason) for s in steps if s.kernel is not None and s.reason]
