"""Reading the SASS of a cubin and checking a kernel against its expectations, no GPU needed.

`sass_text` runs `cuobjdump -sass`; cuobjdump hands the disassembly to nvdisasm and,
when it cannot find it, prints only the 'code for sm_XX' header. So nvdisasm's directory
is put on PATH (and NVDISASM_PATH) and the output is checked for real instructions.
`sass_summary` counts instruction mnemonics per function and `check_kernel` turns
the SASS and ptxas's report into a list of problems: a missing tensor-core or async-copy
instruction, local-memory traffic or spills, a register or shared-memory budget exceeded.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter

from qcompile.backends.cuda import toolchain
from qcompile.backends.cuda.toolchain import PACKAGES, SassError

_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-fA-F]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")

LOCAL_MEMORY = ("LDL", "STL")


def _environment(nvdisasm: str) -> dict[str, str]:
    """The process environment with nvdisasm's directory first on PATH."""
    env = dict(os.environ)
    folder = os.path.dirname(nvdisasm)
    env["PATH"] = folder + os.pathsep + env.get("PATH", "")
    env["NVDISASM_PATH"] = folder
    return env


def _run_cuobjdump(cubin: bytes, cuobjdump: str, nvdisasm: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="qcompile-sass-") as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        return subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True,
                              env=_environment(nvdisasm), timeout=120, check=False)


def sass_text(cubin: bytes, *, cuobjdump: str | None = None, nvdisasm: str | None = None) -> str:
    """The SASS of `cubin` as printed by `cuobjdump -sass`.

    The tools default to the ones found by `toolchain`. Raises SassError when cuobjdump
    fails or prints no instructions (a bad cubin, or nvdisasm not found)."""
    if not cubin:
        raise SassError("no cubin to disassemble (was the kernel compiled to PTX only?)")
    cuobjdump = cuobjdump or toolchain.cuobjdump()
    nvdisasm = nvdisasm or toolchain.nvdisasm()
    try:
        done = _run_cuobjdump(cubin, cuobjdump, nvdisasm)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SassError(f"cannot run {cuobjdump}: {exc}", package=PACKAGES["cuobjdump"]) from None
    text = done.stdout
    if done.returncode != 0 or not any(_INSTRUCTION.match(line) for line in text.splitlines()):
        detail = (done.stderr or text).strip() or f"exit status {done.returncode}"
        package = PACKAGES["nvdisasm"] if "nvdisasm" in detail else None
        raise SassError(f"cuobjdump printed no SASS: {detail}", package=package)
    return text


def sass_summary(text: str) -> dict[str, dict[str, int]]:
    """{function: {mnemonic: count}} for the SASS of one cubin. The mnemonic is the
    opcode without modifiers ('IMMA.16832.S8.S8' counts as 'IMMA'); predicates are
    dropped."""
    summary: dict[str, Counter] = {}
    current = None
    for line in text.splitlines():
        function = _FUNCTION.match(line)
        if function:
            current = summary.setdefault(function.group(1), Counter())
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction and current is not None:
            current[instruction.group(1)] += 1
    return {name: dict(counts) for name, counts in summary.items()}


def _selected(summary: dict, compiled, function: str | None) -> list[str]:
    """The functions to check: the one asked for, else the kernel's own name when the
    cubin has it, else all of them."""
    if function is not None:
        return [function]
    if compiled.name in summary:
        return [compiled.name]
    return sorted(summary)


def _function_problems(name, counts, resources, expect, max_registers, max_shared):
    found = [f"{name}: no {mnemonic} instruction in the SASS"
             for mnemonic in expect if not counts.get(mnemonic)]
    local = {m: counts[m] for m in LOCAL_MEMORY if counts.get(m)}
    if local:
        listed = ", ".join(f"{n} {m}" for m, n in local.items())
        found.append(f"{name}: local memory traffic in the SASS ({listed})")
    if resources.get("spill_stores") or resources.get("spill_loads"):
        found.append(f"{name}: ptxas reports {resources['spill_stores']} bytes spill stores, "
                     f"{resources['spill_loads']} bytes spill loads")
    registers = resources.get("registers", 0)
    if max_registers is not None and registers > max_registers:
        found.append(f"{name}: uses {registers} registers, over the budget of {max_registers}")
    shared = resources.get("shared", 0)
    if max_shared is not None and shared > max_shared:
        found.append(f"{name}: uses {shared} bytes of static shared memory, "
                     f"over the budget of {max_shared}")
    return found


def check_kernel(compiled, expect=("IMMA", "LDSM", "LDGSTS"), max_registers: int | None = None,
                 max_shared: int | None = None, *, function: str | None = None,
                 sass: str | None = None) -> list[str]:
    """Problems of a CompiledKernel, one sentence each; empty when it is fine.

    Checks the function named `function` (default: the kernel's name when the cubin
    has it, else every function): each mnemonic in `expect` appears, no LDL/STL,
    no ptxas-reported spills, registers <= max_registers, static shared memory
    <= max_shared bytes. `sass` reuses an earlier `sass_text` of the same cubin."""
    summary = sass_summary(sass if sass is not None else sass_text(compiled.cubin))
    problems = []
    for name in _selected(summary, compiled, function):
        if name not in summary:
            problems.append(f"{name}: no such function in the SASS "
                            f"(functions: {', '.join(sorted(summary)) or 'none'})")
            continue
        resources = compiled.resources.get(name, {})
        problems += _function_problems(name, summary[name], resources, expect,
                                       max_registers, max_shared)
    return problems
