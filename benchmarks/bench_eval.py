"""Throughput of our evaluation path against plain lm-eval, same model, task and items, same run.

    python benchmarks/bench_eval.py [--items 60] [--repeats 2] [--task arc_easy] [--batch-size 16]

"Plain lm-eval" is lm-eval's own HFLM loading the same cached SmolLM2 folder, run through
`lm_eval.evaluate` on the first N eval items (`limit=N`). "Ours" is `harness.evaluate`, which wraps the
same HFLM, FLOP-counts every forward pass and scores the same N items (`samples=[0..N)`).
Both orders alternate; the table shows the median items/s of each and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from harness.cli import compose_config
    from harness.evaluate import evaluate_adaptation
    from harness.models import load_model
    from harness.strategy import Adaptation
    from harness.tasks import TaskHandle, quiet_lm_eval

    quiet_lm_eval()
    cfg = compose_config(["model=smollm2-135m", f"task={args.task}"])
    loaded = load_model(cfg.model, torch.device("cpu"), torch.float32)
    task = TaskHandle.from_cfg(cfg.task)
    folder = loaded.info["cache"]
    plain_lm = HFLM(pretrained=folder, batch_size=args.batch_size, device="cpu", dtype="float32")
    indices = list(range(args.items))

    def plain() -> float:
        start = time.perf_counter()
        out = lm_eval.evaluate(lm=plain_lm, task_dict={task.lm_eval_name: task.task}, limit=args.items,
                               bootstrap_iters=1000, verbosity="ERROR")
        elapsed = time.perf_counter() - start
        plain.acc = out["results"][task.lm_eval_name]["acc,none"]
        return elapsed

    def ours(count_flops: bool) -> float:
        start = time.perf_counter()
        res = evaluate_adaptation(loaded.model, loaded.tokenizer, task, Adaptation(kind="none"), indices,
                                  args.batch_size, torch.device("cpu"), count_flops=count_flops)
        elapsed = time.perf_counter() - start
        ours.acc = res.metrics["acc"]
        if count_flops:
            ours.flops = res.cost.flops_measured
        return elapsed

    ours(True)  # warm-up (tokenizer caches, first-call allocations), not timed
    times = {"plain lm-eval": [], "ours (FLOP-counted)": [], "ours (no FLOP counting)": []}
    for r in range(args.repeats):
        runs = [("plain lm-eval", plain), ("ours (FLOP-counted)", lambda: ours(True)),
                ("ours (no FLOP counting)", lambda: ours(False))]
        if r % 2:
            runs.reverse()
        for name, fn in runs:
            times[name].append(fn())
    base = statistics.median(times["plain lm-eval"])
    print(f"\nEvaluation throughput: SmolLM2-135M (float32, CPU, {torch.get_num_threads()} threads), "
          f"task {args.task}, {args.items} items, batch {args.batch_size}, {args.repeats} repeats (median)\n")
    print("| path | items/s | seconds | vs plain lm-eval |")
    print("|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {args.items / med:.2f} | {med:.1f} | {base / med:.3f}x |")
    print(f"\nacc: plain {plain.acc:.4f}, ours {ours.acc:.4f} (must be equal); measured FLOPs {ours.flops:.3e}")
    print("reproduce: python benchmarks/bench_eval.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
