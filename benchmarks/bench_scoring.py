"""Items/s of our log-likelihood path against plain lm-eval, and the peak memory of long ICL prompts.

    python benchmarks/bench_scoring.py [--repeats 5] [--batch-size 16] [--cases arc_easy,hellaswag,icl]
                                       [--items 64] [--icl-items 16] [--memory-shots 16,64] [--memory-items 16]
                                       [--threads N]

Speed: the same cached SmolLM2 (float32, CPU), the same items and batch size, in one process, arms
interleaved (the order alternates each repeat), median seconds per arm:
- `lm-eval`: lm-eval's own `HFLM`, unmodified (no FLOP counting, per-pair scoring);
- `ours`: `harness.evaluate.evaluate_adaptation` as a cell runs it: the shared-context scorer, the ICL
  prefix encoded once, memory-planned batches, every forward pass FLOP-counted;
- `ours, uncounted`: the same with engine.count_flops=false, to show what the counting costs.
Cases: ARC-Easy 0-shot, HellaSwag 0-shot, ARC-Challenge with a 16-demonstration ICL prefix (drawn by the
icl strategy from the task's pool, prepended through the description, as a cell does). The table checks
that every arm gave the same accuracy and the largest log-likelihood difference from lm-eval's.

Memory: for each of `--memory-shots`, a fresh process scores `--memory-items` ARC-Challenge items with
that many demonstrations through our path and reports its peak resident memory (VmHWM), model included.
On a shared or loaded machine read the ratios, not the absolute rates.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

ARMS = ("lm-eval", "ours", "ours, uncounted")


def _setup(shots: int):
    import torch

    from harness.budget import Budget
    from harness.cli import compose_config
    from harness.models import load_model
    from harness.strategy import AdaptContext, get_strategy
    from harness.tasks import TaskHandle, quiet_lm_eval

    quiet_lm_eval()
    loaded = load_model(compose_config(["model=smollm2-135m"]).model, torch.device("cpu"), torch.float32)
    challenge = TaskHandle.from_cfg(compose_config(["task=arc_challenge"]).task)
    with tempfile.TemporaryDirectory() as workdir:
        icl = get_strategy("icl").adapt(AdaptContext(
            model=loaded.model, tokenizer=loaded.tokenizer, task=challenge,
            budget=Budget("free", "steps", 1, 100, "amortized", "cached"),
            settings=compose_config(["strategy=icl", f"strategy.shots={shots}"]).strategy, seed=0,
            workdir=workdir, device=torch.device("cpu"), progress=False))
    return loaded, challenge, icl


def _ours(loaded, task, adaptation, indices, batch_size, count_flops=True):
    import torch
    from omegaconf import OmegaConf

    from harness.evaluate import evaluate_adaptation

    engine = OmegaConf.create({"name": "hf", "scorer": "shared_context", "memory_gib": "auto"})
    res = evaluate_adaptation(loaded.model, loaded.tokenizer, task, adaptation, indices, batch_size,
                              torch.device("cpu"), count_flops=count_flops, engine_cfg=engine)
    return res.metrics["acc"], [r[0][0] for s in res.samples for r in s["resps"]], res.cost.flops_measured


def _plain(loaded, task, adaptation, indices, batch_size):
    """lm-eval's HFLM as `lm_eval --model hf` builds it, the prefix in the task's description as ours."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from harness.evaluate import _escape_template

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
    task.task.set_config(key="description", value=_escape_template(adaptation.prefix or ""))
    try:
        out = lm_eval.evaluate(lm=lm, task_dict={task.lm_eval_name: task.task},
                               samples={task.lm_eval_name: list(indices)}, log_samples=True, bootstrap_iters=1000,
                               verbosity="ERROR")
    finally:
        task.task.set_config(key="description", value="")
    samples = out["samples"][task.lm_eval_name]
    return out["results"][task.lm_eval_name]["acc,none"], [r[0][0] for s in samples for r in s["resps"]], None


def speed(args) -> None:
    import torch

    from harness.cli import compose_config
    from harness.strategy import Adaptation
    from harness.tasks import TaskHandle

    loaded, challenge, icl = _setup(16)
    easy = TaskHandle.from_cfg(compose_config(["task=arc_easy"]).task)
    hellaswag = TaskHandle.from_cfg(compose_config(["task=hellaswag"]).task)
    none = Adaptation(kind="none")
    cases = {"arc_easy": (f"ARC-Easy 0-shot, {args.items} items", easy, none, easy.eval_indices(args.items, 0)),
             "hellaswag": (f"HellaSwag 0-shot, {args.items} items", hellaswag, none,
                           hellaswag.eval_indices(args.items, 0)),
             "icl": (f"ARC-Challenge {icl.labels_used}-shot ICL, {args.icl_items} items", challenge, icl,
                     challenge.eval_indices(args.icl_items, 0))}
    print(f"\nScoring speed: SmolLM2-135M (float32, CPU, {torch.get_num_threads()} threads), batch {args.batch_size}, "
          f"{args.repeats} repeats interleaved (median)\n")
    print("| case | lm-eval items/s | ours items/s | ours, uncounted items/s | ours ÷ lm-eval | uncounted ÷ lm-eval "
          "| acc (all arms) | max abs Δ log-lik vs lm-eval | FLOPs ours ÷ lm-eval's per-pair price |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        label, task, adaptation, indices = cases[name]
        runs = {"lm-eval": lambda: _plain(loaded, task, adaptation, indices, args.batch_size),
                "ours": lambda: _ours(loaded, task, adaptation, indices, args.batch_size),
                "ours, uncounted": lambda: _ours(loaded, task, adaptation, indices, args.batch_size, False)}
        _ours(loaded, task, adaptation, indices[:2], args.batch_size)  # warm-up, not timed
        _plain(loaded, task, adaptation, indices[:2], args.batch_size)
        times, results = {arm: [] for arm in ARMS}, {}
        for r in range(args.repeats):
            order = ARMS[r % 3:] + ARMS[:r % 3]
            for arm in order:
                start = time.perf_counter()
                results[arm] = runs[arm]()
                times[arm].append(time.perf_counter() - start)
        accs = {arm: results[arm][0] for arm in ARMS}
        delta = max(abs(a - b) for arm in ARMS[1:] for a, b in zip(results[arm][1], results["lm-eval"][1], strict=True))
        rate = {arm: len(indices) / statistics.median(times[arm]) for arm in ARMS}
        same = "same" if len(set(accs.values())) == 1 else f"DIFFER {accs}"
        from harness.flops import ModelShape
        from harness.pricing import QueryPricer

        per_pair = QueryPricer(task, loaded.tokenizer, ModelShape.of(loaded.model), scorer="lm_eval").flops(
            adaptation.prefix, docs=[task.eval_docs[i] for i in indices]) * len(indices)
        print(f"| {label} | {rate['lm-eval']:.2f} | {rate['ours']:.2f} | {rate['ours, uncounted']:.2f} "
              f"| {rate['ours'] / rate['lm-eval']:.2f}x | {rate['ours, uncounted'] / rate['lm-eval']:.2f}x "
              f"| {accs['ours']:.3f} ({same}) | {delta:.1e} | {results['ours'][2] / per_pair:.3f} |", flush=True)


def memory_child(shots: int, items: int, batch_size: int) -> None:
    loaded, challenge, icl = _setup(shots)
    start = time.perf_counter()
    acc, _, flops = _ours(loaded, challenge, icl, challenge.eval_indices(items, 0), batch_size)
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"shots": icl.labels_used, "prefix_tokens": icl.details["prefix_tokens"], "acc": acc,
                      "peak_gib": peak / 2**30, "seconds": seconds, "items": items}))


def memory(args) -> None:
    print(f"\nPeak memory (VmHWM, model included) of ours on ARC-Challenge ICL, {args.memory_items} items, batch "
          f"{args.batch_size}, engine.memory_gib=auto\n")
    print("| shots | prefix tokens | peak GiB | seconds | items/s | acc |")
    print("|---|---|---|---|---|---|")
    for shots in [int(s) for s in args.memory_shots.split(",") if s]:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(shots), "--memory-items",
                              str(args.memory_items), "--batch-size", str(args.batch_size)]
                             + (["--threads", str(args.threads)] if args.threads else []),
                             capture_output=True, text=True)
        if out.returncode:
            print(f"| {shots} | — | failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]} | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['shots']} | {r['prefix_tokens']} | {r['peak_gib']:.2f} | {r['seconds']:.1f} "
              f"| {r['items'] / r['seconds']:.2f} | {r['acc']:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--icl-items", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cases", default="arc_easy,hellaswag,icl", help="of arc_easy,hellaswag,icl ('' for none)")
    parser.add_argument("--memory-shots", default="16,64")
    parser.add_argument("--memory-items", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.memory_items, args.batch_size)
        return
    if args.cases:
        speed(args)
    if args.memory_shots:
        memory(args)
    print("\nreproduce: HARNESS_DATA_DIR=../shared/data python benchmarks/bench_scoring.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
