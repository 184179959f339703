"""A user pass: count the integer ops the compiler produced, and run it by name.

    python examples/custom_pass.py

A pass is a function `fn(gm, ctx, *, option=default)` registered with a kebab-case name.
Its keyword-only parameters are its options, set from pipeline text as `name{option=value}`
(underscores become dashes). It returns `qcompile.PassResult(graph_module, modified, stats)`;
the stats end up in `cm.report` next to the built-in passes' stats.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn

import qcompile

QDQ = {"quantize", "dequantize", "quantize_per_channel", "dequantize_per_channel", "requantize"}


@qcompile.register_pass("count-int8-ops")
def count_int8_ops(gm, ctx, *, include_qdq=False):
    """Count the qcompile integer ops in the graph (quantize/dequantize only with include-qdq)."""
    counts: Counter = Counter()
    for node in gm.graph.nodes:
        target = node.target
        if node.op != "call_function" or getattr(target, "namespace", None) != "qcompile":
            continue
        name = target.name().split("::", 1)[1]
        if include_qdq or name not in QDQ:
            counts[name] += 1
    total = sum(counts.values())
    ctx.note(f"{total} integer op(s): {dict(sorted(counts.items()))}")
    return qcompile.PassResult(gm, modified=False, stats={"int8_ops": total, **counts})


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.mean(dim=(2, 3)))


def _stats(cm, pass_name: str) -> dict:
    return next(p.stats for p in cm.report.passes if p.name == pass_name)


def main() -> dict:
    torch.manual_seed(0)
    model = TinyNet().eval()
    example = torch.randn(2, 3, 8, 8)
    batches = [torch.randn(2, 3, 8, 8) for _ in range(4)]

    # 1. By name, at the end of the target's default pipeline.
    cm = qcompile.compile(model, target="reference", example_inputs=(example,),
                          calibration_data=batches, pipeline="default,count-int8-ops")
    at_end = _stats(cm, "count-int8-ops")

    # 2. Inserted right after a named pass of the default pipeline, with an option set.
    pipeline = qcompile.Pipeline.parse("default", default=qcompile.default_pipeline("reference"))
    pipeline = pipeline.insert_after("lower-int8", "count-int8-ops{include-qdq=true}")
    cm2 = qcompile.compile(model, target="reference", example_inputs=(example,),
                           calibration_data=batches, pipeline=str(pipeline))
    after_lower = _stats(cm2, "count-int8-ops")

    error = (cm(example) - model(example)).abs().max().item()
    print(f"pipeline: {pipeline}")
    print(f"at the end:         {at_end}")
    print(f"after lower-int8:   {after_lower}")
    print(f"max |int8 - float|: {error:.4f}")
    return {"at_end": at_end, "after_lower": after_lower, "pipeline": str(pipeline),
            "compiled": cm, "max_error": error}


if __name__ == "__main__":
    main()
