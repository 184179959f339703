"""Speed of the cpu-int8 target against the field, with the accuracy of each beside it.

    python benchmarks/cpu.py [--quick] [--rounds N] [--threads 2] [--include-reference]

Rows and columns: the workloads and contenders of benchmarks/contenders.py. Latency is the
median of every timed call over all rounds (warm-up first; contenders interleaved within a
round so that a noisy spell hits all of them). Accuracy: MiniLM mean cosine of mean-pooled
embeddings to fp32; CNNs output SQNR dB to fp32. Writes benchmarks/results/cpu.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from benchmarks.contenders import (CONTENDERS, Built, Workload, build_contender,  # noqa: E402
                                   workloads)
from benchmarks.machine import machine_info  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONTENTION_NOTE = (
    "The machine is shared. For each row and round the 1-minute load average is read before "
    "and after timing, and /proc/stat gives the CPU time other processes used while it ran "
    "('others', in cores; this run uses {threads} threads on {cores} cores). Before each timing "
    "the run waits up to {wait} s for others < 0.25 cores. The table shows "
    "the worst round; the JSON has every round. Rows timed while others > 0.2 cores are "
    "contended: their latency is an upper bound.")


# ---- measuring ---------------------------------------------------------------------------------

def cpu_sample() -> dict:
    with open("/proc/stat", encoding="utf-8") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    own = os.times()
    return {"load1": os.getloadavg()[0], "busy": v[0] + v[1] + v[2] + v[5] + v[6],
            "steal": v[7], "total": sum(v), "own": own.user + own.system,
            "wall": time.perf_counter()}


def contention(before: dict, after: dict) -> dict:
    hz = os.sysconf("SC_CLK_TCK")
    wall = max(after["wall"] - before["wall"], 1e-9)
    others = ((after["busy"] - before["busy"]) / hz - (after["own"] - before["own"])) / wall
    steal = (after["steal"] - before["steal"]) / max(after["total"] - before["total"], 1)
    return {"load_before": round(before["load1"], 2), "load_after": round(after["load1"], 2),
            "others_cores": round(max(others, 0.0), 2), "steal_pct": round(100 * steal, 1)}


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Sleep in 0.5 s windows until other processes use < threshold cores (or time is up)."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        before = cpu_sample()
        time.sleep(0.5)
        if contention(before, cpu_sample())["others_cores"] < threshold:
            break
    return round(time.perf_counter() - start, 1)


def time_calls(fn, inputs, budget_s: float, warm_up: bool, min_iters: int = 3,
               max_iters: int = 200) -> list:
    """Warm up once, then time calls until min_iters and budget_s are both reached."""
    with torch.no_grad():
        if warm_up:
            fn(*inputs)
        times, start = [], time.perf_counter()
        while len(times) < min_iters or (time.perf_counter() - start < budget_s
                                         and len(times) < max_iters):
            t = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - t)
    return times


def accuracy(fn, reference_fn, w: Workload) -> float:
    from qcompile.instruments import sqnr_db
    from qcompile.zoo.minilm import cosine_to_reference, mean_pool

    outs, refs = [], []
    with torch.no_grad():
        for batch in w.eval_batches:
            out, ref = [torch.as_tensor(f(*batch)).float() for f in (fn, reference_fn)]
            if w.metric == "cosine":
                out, ref = mean_pool(out, batch[1]), mean_pool(ref, batch[1])
            outs.append(out)
            refs.append(ref)
    if w.metric == "cosine":
        return round(cosine_to_reference(torch.cat(outs), torch.cat(refs)), 4)
    db = sqnr_db(torch.cat(refs), torch.cat(outs))
    return "inf" if math.isinf(db) else round(db, 2)  # a string: JSON has no infinity


# ---- one workload ------------------------------------------------------------------------------

def build_all(w: Workload, names: list[str], threads: int) -> list[Built]:
    built = []
    for name in names:
        print(f"  building {name} ...", flush=True)
        b = build_contender(name, CONTENDERS[name], w, threads)
        print(f"    {'ok' if b.available else 'UNAVAILABLE: ' + str(b.reason)} "
              f"({b.build_s:.1f} s)", flush=True)
        built.append(b)
    return built


def measure(built: list[Built], w: Workload, args) -> dict:
    samples = {b.name: {"times": [], "rounds": []} for b in built if b.available}
    for r in range(args.rounds):
        for b in built:
            if not b.available:
                continue
            time.sleep(0.1)  # let other runtimes' spinning worker threads go idle
            waited = wait_for_quiet(args.wait_quiet)
            before = cpu_sample()
            try:
                known = samples[b.name]["times"]  # slow ones (> 0.5 s) warm up only once: in build
                warm_up = not known or statistics.median(known) < 0.5
                times = time_calls(b.fn, w.inputs, args.budget, warm_up)
            except Exception as exc:  # noqa: BLE001 - a contender must never crash the run
                b.fn, b.reason = None, f"failed while timing: {type(exc).__name__}: {exc}"[:300]
                samples.pop(b.name)
                continue
            stats = contention(before, cpu_sample())
            samples[b.name]["times"] += times
            samples[b.name]["rounds"].append({"round": r, "median_ms": round(
                1e3 * statistics.median(times), 3), "iters": len(times), "waited_s": waited,
                **stats})
    return samples


def exactness_note(built: list[Built], w: Workload) -> str | None:
    by_name = {b.name: b for b in built if b.available}
    if "qcompile reference" not in by_name or "qcompile cpu-int8" not in by_name:
        return None
    with torch.no_grad():
        ref = torch.as_tensor(by_name["qcompile reference"].fn(*w.inputs)).float()
        out = torch.as_tensor(by_name["qcompile cpu-int8"].fn(*w.inputs)).float()
    return f"max abs difference to qcompile reference: {float((out - ref).abs().max()):.3g}"


def row(b: Built, sample: dict | None, base_ms: float | None, acc) -> dict:
    entry = {"contender": b.name, "available": b.available, "build_s": round(b.build_s, 2),
             "notes": b.notes, "reason": b.reason}
    if sample is None:
        return entry
    median = 1e3 * statistics.median(sample["times"])
    worst = max(sample["rounds"], key=lambda s: s["others_cores"])
    entry.update({"latency_ms": round(median, 3),
                  "min_ms": round(1e3 * min(sample["times"]), 3), "calls": len(sample["times"]),
                  "x_torch_fp32": round(median / base_ms, 3) if base_ms else None,
                  "accuracy": acc, "worst_round": worst, "rounds": sample["rounds"]})
    return entry


def run_workload(w: Workload, names: list[str], args) -> dict:
    print(f"== {w.name}", flush=True)
    start_load = cpu_sample()
    built = build_all(w, names, args.threads)
    samples = measure(built, w, args)
    base = samples.get("torch fp32 eager")
    base_ms = 1e3 * statistics.median(base["times"]) if base else None
    eager = next((b.fn for b in built if b.name == "torch fp32 eager" and b.available), None)
    rows = []
    for b in built:
        acc = None
        if b.available and eager is not None:
            try:
                acc = accuracy(b.fn, eager, w)
            except Exception as exc:  # noqa: BLE001 - keep the timing
                acc = f"failed: {type(exc).__name__}: {exc}"[:200]
        rows.append(row(b, samples.get(b.name), base_ms, acc))
    note = exactness_note(built, w)
    if note:
        next(r for r in rows if r["contender"] == "qcompile cpu-int8")["notes"] += "; " + note
    return {"model": w.name, "input": [list(t.shape) for t in w.inputs],
            "metric": "mean cosine of pooled embeddings vs fp32" if w.metric == "cosine"
            else "output SQNR dB vs fp32", "eval_batches": len(w.eval_batches),
            "contention": contention(start_load, cpu_sample()), "rows": rows}


# ---- output --------------------------------------------------------------------------------

def table_row(r: dict) -> str:
    if not r["available"]:
        reason = str(r["reason"]).replace("|", "\\|")
        return f"| {r['contender']} | unavailable: {reason} | | | {r['notes']} |"
    worst = r["worst_round"]
    load = (f"load {worst['load_before']}->{worst['load_after']}, "
            f"others {worst['others_cores']} cores")
    ratio = "" if r["x_torch_fp32"] is None else f"{r['x_torch_fp32']:.2f}x"
    build = ("compile" if r["contender"].startswith("qcompile") else "build") + \
        f" {r['build_s']:.1f} s"
    notes = "; ".join(x for x in (r["notes"], build, load) if x).replace("|", "\\|")
    return f"| {r['contender']} | {r['latency_ms']:.2f} | {ratio} | {r['accuracy']} | {notes} |"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# cpu-int8 speed against the field", "", f"Command: `{m['command']}`  ",
             f"Date: {m['date']}  ", f"CPU: {m['cpu']} ({m['cores']} cores; "
             f"{', '.join(m['simd'])})  ", f"Threads: {report['threads']} (torch, onnxruntime "
             "intra-op, TVM_NUM_THREADS)  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + "  ",
             f"Rounds: {report['rounds']}; total run time {report['total_s']:.0f} s", "",
             "Contention: " + report["contention_note"], ""]
    for model in report["models"]:
        c = model["contention"]
        lines += [f"## {model['model']}", "", f"Inputs {model['input']}; accuracy: "
                  f"{model['metric']} over {model['eval_batches']} batch(es); load average "
                  f"{c['load_before']} before, {c['load_after']} after the row "
                  f"(others {c['others_cores']} cores on average).", "",
                  "| contender | latency ms | x torch fp32 | accuracy | notes |",
                  "|---|---|---|---|---|"]
        lines += [table_row(r) for r in model["rows"]] + [""]
    return "\n".join(lines)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    found = {}
    for name in ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxscript"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, one round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed calls per contender and round "
                        "(default 2; quick 0.5)")
    parser.add_argument("--include-reference", action="store_true",
                        help="also time target='reference' (the integer spec, slow by design)")
    parser.add_argument("--wait-quiet", type=float, default=None,
                        help="before each timing, wait up to this many seconds for other "
                        "processes to use < 0.25 cores (default 30; quick 0)")
    parser.add_argument("--only", choices=("minilm", "resnet", "mobilenet"), default=None)
    parser.add_argument("--contenders", default=None,
                        help="comma-separated contender names (default: all)")
    parser.add_argument("--results", default=RESULTS, help="directory for cpu.md / cpu.json")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.budget = args.budget if args.budget is not None else (0.5 if args.quick else 2.0)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 30.0
    return args


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before anything imports tvm
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    names = [n for n in CONTENDERS if args.include_reference or n != "qcompile reference"]
    if args.contenders:
        wanted = [n.strip() for n in args.contenders.split(",")]
        unknown = sorted(set(wanted) - set(CONTENDERS))
        if unknown:
            raise SystemExit(f"unknown contender(s) {unknown}; known: {list(CONTENDERS)}")
        names = ["torch fp32 eager"] + [n for n in wanted if n != "torch fp32 eager"]
    models = [run_workload(w, names, args) for w in workloads(args.quick, args.only)]
    machine = machine_info(["python", "benchmarks/cpu.py"] + argv)
    machine["versions"].update(versions())
    note = CONTENTION_NOTE.format(threads=args.threads, cores=os.cpu_count(),
                                  wait=args.wait_quiet)
    report = {"machine": machine, "threads": args.threads, "rounds": args.rounds,
              "quick": args.quick, "budget_s": args.budget, "wait_quiet_s": args.wait_quiet,
              "total_s": time.perf_counter() - start, "contention_note": note, "models": models}
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "cpu.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.results, "cpu.md"), "w", encoding="utf-8") as f:
        f.write(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
