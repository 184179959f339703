"""Quantization-aware training.

    qat = qcompile.prepare_qat(model, example_inputs=x, calibration_data=data)   # w8a8
    optimizer = torch.optim.Adam([{"params": qat.weight_parameters(), "lr": 3e-4},
                                  {"params": qat.scale_parameters(), "lr": 1e-2}])
    ...train qat like any nn.Module (it returns what the model returns)...
    cm = qcompile.compile(qat.eval(), target="cpu-int8", example_inputs=x)

prepare_qat captures the model and runs the target's pipeline up to `calibrate`, so every
value insert-qdq would quantize has an observer site and calibrated int8 qparams. Each site
becomes a `FakeQuantSite` (learnable scale, fixed zero point), and each weight insert-qdq would
quantize gets a `WeightFakeQuant` (per-channel max-abs grid). Training sees exactly the rounding
and clamping the integer kernels will do, with straight-through gradients.

compile() of the trained module runs `qat-freeze` (learned qparams into the facts, weight fake
quant removed) and then the rest of the pipeline (insert-qdq with weight_calibration="minmax",
lower-int8, cleanup): the same integer graph PTQ would build with those scales. Compiling it
while it is still in training mode is an error.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx

from .errors import RecipeError
from .facts import facts_of

QAT_RECIPES = ("w8a8",)
PREFIX_END = "calibrate"


class QATModel(torch.nn.Module):
    """The trainable fake-quantized graph of a model, ready for qcompile.compile()."""

    def __init__(self, graph_module: fx.GraphModule, input_specs, recipe, example_inputs):
        super().__init__()
        self.graph_module = graph_module
        self.input_specs = input_specs
        self.recipe = recipe
        self.example_inputs = example_inputs

    def forward(self, *args):
        return self.graph_module(*args)

    def train(self, mode: bool = True) -> "QATModel":
        """Flags only: the captured graph runs the same ops in both modes (an exported
        graph module refuses train() itself)."""
        for module in self.modules():
            module.training = mode
        return self

    def scale_parameters(self) -> list[torch.nn.Parameter]:
        """The learnable activation scales (they usually want a larger learning rate)."""
        from qcompile.passes.quantize.fake_quant import FakeQuantSite
        return [m.scale for m in self.modules() if isinstance(m, FakeQuantSite)]

    def weight_parameters(self) -> list[torch.nn.Parameter]:
        """Every other trainable parameter: the model's weights and biases."""
        scales = {id(p) for p in self.scale_parameters()}
        return [p for p in self.parameters() if id(p) not in scales]

    def activation_qparams(self) -> dict:
        """value name -> QParams the activations currently train to."""
        from qcompile.passes.quantize.fake_quant import FakeQuantSite
        from qcompile.passes.quantize.site import observer_sites
        return {site.value_name: site.qparams() for _, site in observer_sites(self.graph_module)
                if isinstance(site, FakeQuantSite)}


def _split_pipeline(pipeline: str) -> tuple[str, str]:
    names = [p.strip() for p in pipeline.split(",")]
    if PREFIX_END not in names:
        raise RecipeError(f"quantization-aware training needs a pipeline with '{PREFIX_END}'")
    cut = names.index(PREFIX_END) + 1
    return ",".join(names[:cut]), ",".join(names[cut:])


def _trainable(gm: fx.GraphModule) -> None:
    """Every float constant the graph reads becomes a trainable parameter of its own (a
    copy: training never changes the user's model, whose tensors the capture shares)."""
    for node in gm.graph.find_nodes(op="get_attr"):
        *path, leaf = node.target.split(".")
        owner = gm.get_submodule(".".join(path)) if path else gm
        value = getattr(owner, leaf)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            delattr(owner, leaf)
            owner.register_parameter(leaf, torch.nn.Parameter(value.detach().clone()))


def _install_fake_quant(gm: fx.GraphModule, ctx, learn_scales: bool) -> None:
    from qcompile.passes.quantize.fake_quant import FakeQuantSite, WeightFakeQuant
    from qcompile.passes.quantize.plan import quantizable_anchors
    from qcompile.passes.quantize.site import observer_sites
    for node, site in observer_sites(gm):
        qp = facts_of(node).qparams
        gm.set_submodule(node.target, FakeQuantSite(site.value_name, qp.scale, qp.zero_point,
                                                    learn_scales, qp.qmin, qp.qmax))
    for anchor, kind in quantizable_anchors(gm, ctx):
        if kind not in ("linear", "conv2d"):
            continue
        name = f"qat_weight_{anchor.name}"
        gm.add_submodule(name, WeightFakeQuant())
        with gm.graph.inserting_before(anchor):
            fq = gm.graph.call_module(name, (anchor.args[1],))
        anchor.args = (anchor.args[0], fq) + tuple(anchor.args[2:])
    gm.graph.lint()
    gm.recompile()


def prepare_qat(model, example_inputs, calibration_data=None, recipe: str = "w8a8",
                target: str = "reference", options=None, learn_scales: bool = True) -> QATModel:
    """A trainable module with fake quantization where compile() will put integers."""
    from .api import _calibration, _load_builtin_passes
    from .capture import capture, normalize_inputs
    from .context import PassContext
    from .pass_manager import PassManager
    from .pipeline import Pipeline
    from .recipes import resolve_recipe
    from .targets import get_target
    _load_builtin_passes()
    if recipe not in QAT_RECIPES:
        raise RecipeError(f"quantization-aware training supports {', '.join(QAT_RECIPES)}, "
                          f"not {recipe!r}")
    resolved = resolve_recipe(recipe, {**dict(options or {}), "weight_calibration": "minmax"})
    args = normalize_inputs(example_inputs)
    captured = capture(model, args)
    ctx = PassContext(target=target, recipe=resolved, example_inputs=args,
                      input_specs=captured.input_specs)
    ctx.calibration_data = _calibration(calibration_data, args, ctx.warn)
    prefix, _ = _split_pipeline(get_target(target).pipeline)
    gm = PassManager(Pipeline.parse(prefix), [])(captured.graph_module, ctx).graph_module
    _install_fake_quant(gm, ctx, learn_scales)
    _trainable(gm)
    return QATModel(gm, captured.input_specs, resolved, args)


def compile_qat(qat: QATModel, tgt, args: tuple, calibration_data, dump_dir, options):
    """The integer model of a trained QATModel (see the module doc)."""
    from .api import compile_captured
    from .capture import Captured
    from .recipes import resolve_recipe
    if qat.training:
        raise RecipeError("the QAT model is still in training mode: call .eval() before "
                          "qcompile.compile (training mode would keep updating scales)")
    resolved = resolve_recipe(qat.recipe, {**dict(options or {}), "weight_calibration": "minmax"})
    _, rest = _split_pipeline(tgt.pipeline)
    graph = copy.deepcopy(qat.graph_module)
    with torch.no_grad():
        for param in graph.parameters():
            param.requires_grad_(False)
    args = args or qat.example_inputs
    return compile_captured(Captured(graph, qat.input_specs), tgt, resolved, args,
                            calibration_data or [args], "qat-freeze," + rest, dump_dir)
