"""The C graph driver: constants as `static const` arrays, activations in the planned arena,
one call per kernel in program order.

Entry points (model.h):

    int model_run_multi(const void* const* in, void* const* out, uint8_t* arena);
    int model_run(const int8_t* in, int8_t* out, uint8_t* arena);   (one input, one output)

`in[i]` / `out[j]` point to the i-th input / j-th output tensor, dense row-major, of the
sizes QC_INPUT<i>_BYTES / QC_OUTPUT<j>_BYTES; `arena` to QC_ARENA_BYTES bytes aligned to 16
(its contents need not survive between calls). Both return 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompile.errors import BackendError

from . import arena as arena_mod

CTYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "int32": "int32_t",
          "int64": "int64_t", "bool": "bool", "uint16": "uint16_t", "uint32": "uint32_t"}
_STRING_MIN = 256  # int8 constants from this size on are written as string literals


@dataclass(frozen=True)
class Step:
    """One kernel call: kernel, tensors passed (buffer arguments, then the output) and the
    byte sizes of its workspaces."""

    kernel: str
    tensors: tuple
    workspaces: tuple


def ctype(dtype: str) -> str:
    return CTYPES[dtype]


def arena_buffers(steps: list, outputs: list) -> list:
    """Arena buffers: every activation not written straight into an output, every workspace."""
    direct = {t.key for t in outputs if t.kind == "act"}
    first: dict = {}
    last: dict = {}
    sizes: dict = {}
    for index, step in enumerate(steps):
        for tensor in step.tensors:
            if tensor.kind == "act" and tensor.key not in direct:
                if sizes.get(tensor.key, tensor.nbytes) != tensor.nbytes:
                    raise BackendError(f"tensor {tensor.key} is used with two sizes")
                first.setdefault(tensor.key, index)
                last[tensor.key] = index
                sizes[tensor.key] = tensor.nbytes
        for w, size in enumerate(step.workspaces):
            name = f"ws{index}_{w}"
            first[name], last[name], sizes[name] = index, index, size
    return [arena_mod.Buffer(str(k), sizes[k], first[k], last[k]) for k in sizes]


def _bytes_literal(data: bytes) -> str:
    rows = []
    for start in range(0, len(data), 48):
        chunk = data[start:start + 48]
        rows.append('  "' + "".join(f"\\{b:03o}" for b in chunk) + '"')
    return "\n".join(rows)


def constant_c(index: int, array: np.ndarray) -> str:
    """`static const <type> qc_c<index>[n] = ...;` for one constant."""
    dtype = str(array.dtype)
    flat = np.ascontiguousarray(array).reshape(-1)
    name, count = f"qc_c{index}", max(flat.size, 1)
    if dtype in ("int8", "uint8") and flat.size >= _STRING_MIN:
        return f"static const {ctype(dtype)} {name}[{count}] =\n{_bytes_literal(flat.tobytes())};"
    if dtype == "bool":
        values = [str(int(v)) for v in flat]
    elif dtype == "int64":
        values = [f"INT64_C({int(v)})" for v in flat]
    else:
        values = [str(int(v)) if int(v) != -2**31 else "INT32_MIN" for v in flat]
    body = ",\n".join("  " + ", ".join(values[i:i + 16]) for i in range(0, len(values), 16))
    return f"static const {ctype(dtype)} {name}[{count}] = {{\n{body or '  0'}\n}};"


class _Pointers:
    """C expressions for the tensors of the run function."""

    def __init__(self, plan, outputs: list):
        self.plan = plan
        self.out_index = {}
        for j, tensor in enumerate(outputs):
            if tensor.kind == "act":
                self.out_index.setdefault(tensor.key, j)

    def tensor(self, t) -> str:
        cast = f"({ctype(t.dtype)}*)"
        if t.kind == "input":
            return f"{cast}in[{t.key}]"
        if t.kind == "const":
            return f"{cast}qc_c{t.key}"
        if t.key in self.out_index:
            return f"{cast}out[{self.out_index[t.key]}]"
        return f"{cast}(arena + {self.plan.offsets[str(t.key)]})"

    def workspace(self, step_index: int, w: int, dtype: str) -> str:
        return f"({ctype(dtype)}*)(arena + {self.plan.offsets[f'ws{step_index}_{w}']})"


def run_function(steps: list, dtypes: dict, outputs: list, plan) -> str:
    """The body of model_run_multi: the kernel calls, then copies for outputs that are not
    written by a kernel (an input, a constant or an output listed twice)."""
    ptr = _Pointers(plan, outputs)
    lines = []
    for i, step in enumerate(steps):
        params = dtypes[step.kernel][len(step.tensors):]
        args = [ptr.tensor(t) for t in step.tensors]
        args += [ptr.workspace(i, w, params[w]) for w in range(len(step.workspaces))]
        lines.append(f"  {step.kernel}({', '.join(args)});")
    for j, tensor in enumerate(outputs):
        if tensor.kind == "act" and ptr.out_index[tensor.key] == j:
            continue
        lines.append(f"  qc_copy(out[{j}], {ptr.tensor(tensor)}, {tensor.nbytes});")
    return ("int model_run_multi(const void* const* in, void* const* out, uint8_t* arena) {\n"
            + "\n".join(lines) + "\n  (void)in;\n  (void)arena;\n  return 0;\n}\n")


_COPY = """static void qc_copy(void* dst, const void* src, uint32_t n) {
  uint32_t i;
  for (i = 0; i < n; ++i) {
    ((uint8_t*)dst)[i] = ((const uint8_t*)src)[i];
  }
}
"""


def header(inputs: list, outputs: list, arena_bytes: int) -> str:
    """model.h: sizes as #defines and the entry points."""
    lines = ["#ifndef QC_MODEL_H", "#define QC_MODEL_H", "#include <stdint.h>", "",
             f"#define QC_ARENA_BYTES {arena_bytes}",
             f"#define QC_NUM_INPUTS {len(inputs)}", f"#define QC_NUM_OUTPUTS {len(outputs)}"]
    lines += [f"#define QC_INPUT{i}_BYTES {t.nbytes}" for i, t in enumerate(inputs)]
    lines += [f"#define QC_OUTPUT{j}_BYTES {t.nbytes}" for j, t in enumerate(outputs)]
    lines += ["", "int model_run_multi(const void* const* in, void* const* out, uint8_t* arena);"]
    if _single(inputs, outputs):
        lines.append("int model_run(const int8_t* in, int8_t* out, uint8_t* arena);")
    return "\n".join(lines + ["", "#endif"]) + "\n"


def _single(inputs: list, outputs: list) -> bool:
    return len(inputs) == 1 and len(outputs) == 1


def _single_entry() -> str:
    return ("int model_run(const int8_t* in, int8_t* out, uint8_t* arena) {\n"
            "  const void* ins[1];\n  void* outs[1];\n  ins[0] = in;\n  outs[0] = out;\n"
            "  return model_run_multi(ins, outs, arena);\n}\n")


def model_c(kernels_text: str, constants: list, run: str, inputs: list, outputs: list,
            origins: dict) -> str:
    """model.c: kernels, constants, the driver."""
    listing = "\n".join(f" *   {name}: {origin}" for name, origin in origins.items())
    banner = ("/* qcompile npu-int8 model. Kernels (TVM C codegen) and their Relax functions:\n"
              f"{listing}\n */")
    parts = [banner, "#include <stdbool.h>", "#include <stdint.h>",
             '#include "model.h"', "", kernels_text]
    parts += [constant_c(i, c) for i, c in enumerate(constants)]
    if "qc_copy(" in run:
        parts.append(_COPY)
    parts.append(run)
    if _single(inputs, outputs):
        parts.append(_single_entry())
    return "\n".join(parts)


HARNESS = r"""/* Runs the model without Python: harness IN0 [IN1 ...] OUT0 [OUT1 ...] (raw bytes). */
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

static uint8_t arena[QC_ARENA_BYTES + 16];

static long file_bytes(const char* path, void* data, long size, int write) {
  FILE* f = fopen(path, write ? "wb" : "rb");
  long n;
  if (f == NULL) {
    return -1;
  }
  n = (long)(write ? fwrite(data, 1, (size_t)size, f) : fread(data, 1, (size_t)size, f));
  fclose(f);
  return n;
}

int main(int argc, char** argv) {
  static const long in_bytes[] = {QC_INPUT_SIZES};
  static const long out_bytes[] = {QC_OUTPUT_SIZES};
  void* in[QC_NUM_INPUTS];
  void* out[QC_NUM_OUTPUTS];
  int i;
  if (argc != 1 + QC_NUM_INPUTS + QC_NUM_OUTPUTS) {
    fprintf(stderr, "usage: %s INPUT... OUTPUT... (%d inputs, %d outputs)\n", argv[0],
            QC_NUM_INPUTS, QC_NUM_OUTPUTS);
    return 2;
  }
  for (i = 0; i < QC_NUM_INPUTS; ++i) {
    in[i] = malloc((size_t)in_bytes[i]);
    if (in[i] == NULL || file_bytes(argv[1 + i], in[i], in_bytes[i], 0) != in_bytes[i]) {
      fprintf(stderr, "cannot read %ld bytes from %s\n", in_bytes[i], argv[1 + i]);
      return 1;
    }
  }
  for (i = 0; i < QC_NUM_OUTPUTS; ++i) {
    out[i] = malloc((size_t)out_bytes[i]);
    if (out[i] == NULL) {
      return 1;
    }
  }
  if (model_run_multi((const void* const*)in, out, arena + (16 - (uintptr_t)arena % 16) % 16)) {
    return 1;
  }
  for (i = 0; i < QC_NUM_OUTPUTS; ++i) {
    if (file_bytes(argv[1 + QC_NUM_INPUTS + i], out[i], out_bytes[i], 1) != out_bytes[i]) {
      fprintf(stderr, "cannot write %s\n", argv[1 + QC_NUM_INPUTS + i]);
      return 1;
    }
    free(out[i]);
  }
  for (i = 0; i < QC_NUM_INPUTS; ++i) {
    free(in[i]);
  }
  return 0;
}
"""


def harness_c(inputs: list, outputs: list) -> str:
    """harness.c for this model's input and output sizes."""
    ins = ", ".join(f"QC_INPUT{i}_BYTES" for i in range(len(inputs)))
    outs = ", ".join(f"QC_OUTPUT{j}_BYTES" for j in range(len(outputs)))
    return HARNESS.replace("QC_INPUT_SIZES", ins).replace("QC_OUTPUT_SIZES", outs)
