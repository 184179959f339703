"""The ONNX graph under construction while an fx graph is exported (see onnx_export.py).

`OnnxGraph` keeps the ONNX nodes and initializers, names every value, and turns fx
arguments into ONNX tensor names: an fx node gives the tensor it was exported to, a
get_attr gives an initializer, a Python number gives a constant, and a list of sizes
(some of them symbolic) gives a 1-D int64 tensor.
"""
from __future__ import annotations

import operator

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import TensorProto, helper, numpy_helper

from .errors import BackendError
from .facts import facts_of
from .graph_edit import constant_value

IR_VERSION = 10  # the IR version of opset 21, which onnxruntime reads
TORCH_TO_ONNX = {
    torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16, torch.float64: TensorProto.DOUBLE,
    torch.int8: TensorProto.INT8, torch.uint8: TensorProto.UINT8,
    torch.int16: TensorProto.INT16, torch.int32: TensorProto.INT32,
    torch.int64: TensorProto.INT64, torch.bool: TensorProto.BOOL,
}
FACT_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
               "f64": torch.float64, "i8": torch.int8, "u8": torch.uint8, "i16": torch.int16,
               "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}


def onnx_dtype(dtype: torch.dtype, node=None) -> int:
    if dtype not in TORCH_TO_ONNX:
        raise BackendError(f"no ONNX element type for {dtype}", node=node)
    return TORCH_TO_ONNX[dtype]


SYMBOLIC_INT_OPS = frozenset({torch.ops.aten.sym_size.int, operator.add, operator.sub,
                              operator.mul, operator.floordiv, operator.neg})


def value_info(node: fx.Node):
    """(torch dtype, shape or None) of an fx node's value, from its facts or its fake value.
    A symbolic size is exported as a 1-element int64 tensor."""
    if node.op == "call_function" and node.target in SYMBOLIC_INT_OPS:
        return torch.int64, (1,)
    info = facts_of(node).tensor
    if info is not None and info.dtype in FACT_DTYPES:
        return FACT_DTYPES[info.dtype], tuple(info.shape)
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return val.dtype, tuple(val.shape)
    return None, None


def rank_of(node: fx.Node) -> int:
    """Rank of an fx node's value; raises BackendError when it was never recorded."""
    _, shape = value_info(node)
    if shape is None:
        raise BackendError("the rank of this value is unknown (no shape recorded)", node=node)
    return len(shape)


class OnnxGraph:
    """ONNX nodes, initializers and names for one exported fx.GraphModule."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.nodes: list = []
        self.initializers: list = []
        self.env: dict[str, str] = {}
        self._names: set[str] = set()
        self._const_cache: dict = {}

    # ---- names and nodes ---------------------------------------------------------------

    def fresh(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ... when it is taken."""
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def add(self, op_type: str, inputs: list, base: str, outputs: int = 1, **attrs):
        """Append one ONNX node; returns its output name (or names when outputs > 1).

        An input of None is an omitted optional input (trailing ones are dropped)."""
        names = [self.fresh(base) for _ in range(outputs)]
        inputs = ["" if i is None else i for i in inputs]
        while inputs and inputs[-1] == "":
            inputs.pop()
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, names,
                                           name=self.fresh(f"{base}/{op_type}"), **attrs))
        return names[0] if outputs == 1 else names

    # ---- constants -----------------------------------------------------------------------

    def initializer(self, array: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def const(self, value, dtype, base: str = "c/const") -> str:
        """A constant (scalar or array) of numpy dtype `dtype`; equal scalars are shared."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        name = self.initializer(array, base)
        if key is not None:
            self._const_cache[key] = name
        return name

    def ints(self, values, base: str = "c/ints") -> str:
        return self.const(list(values), np.int64, base)

    def tensor_of(self, node: fx.Node) -> torch.Tensor:
        """The tensor behind a get_attr argument; BackendError when it is not a constant."""
        value = constant_value(self.gm, node)
        if value is None:
            raise BackendError("expected a constant tensor argument here", node=node)
        return value.detach()

    # ---- fx arguments -> ONNX names ------------------------------------------------------

    def tensor(self, node: fx.Node) -> str:
        """The ONNX name of an fx node's value (a get_attr becomes an initializer on first use)."""
        if node.name not in self.env:
            if node.op != "get_attr":
                raise BackendError("value used before it was exported", node=node)
            value = self.tensor_of(node)
            if value.dtype == torch.bfloat16:
                raise BackendError("bfloat16 constants are not exported", node=node)
            self.env[node.name] = self.initializer(value.cpu().numpy(), node.name)
        return self.env[node.name]

    def value(self, arg, like=np.float32, base: str = "c/scalar") -> str:
        """An fx argument as an ONNX name: node, Python number (of dtype `like`), or size list."""
        if isinstance(arg, fx.Node):
            return self.tensor(arg)
        if isinstance(arg, (list, tuple)):
            return self.sizes(arg)
        if isinstance(arg, bool):
            return self.const(arg, np.bool_, base)
        return self.const(arg, like, base)

    def sizes(self, values) -> str:
        """A 1-D int64 tensor from ints and symbolic sizes (each a 1-element int64 tensor)."""
        if all(isinstance(v, int) for v in values):
            return self.ints(values, "c/shape")
        parts = [self.tensor(v) if isinstance(v, fx.Node) else self.ints([v]) for v in values]
        return self.add("Concat", parts, "shape/concat", axis=0)

    def scalar(self, arg, like=np.int64) -> str:
        """A rank-0 value: symbolic sizes (1-element tensors) are squeezed."""
        if isinstance(arg, fx.Node):
            return self.add("Squeeze", [self.tensor(arg)], f"{arg.name}/scalar")
        return self.const(arg, like)

    def model(self, inputs: list, outputs: list, opset: int, name: str = "qcompile"):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="qcompile")
        model.ir_version = min(onnx.IR_VERSION, IR_VERSION)
        return model
