"""Tokens/s of the shared LoRA trainer on SmolLM2-135M (CPU here; GPU where one is visible).

    python benchmarks/bench_trainer.py [--steps 12] [--batch-size 4] [--task arc_easy]

Trains rank-8 LoRA on all attention and MLP projections for a fixed number of steps (the first two are
warm-up and not timed) and prints tokens/s (real and padded), step time and measured FLOP/s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    import torch

    from conftest import compose
    from harness.budget import Budget, TrainingBudget
    from harness.costs import PhaseMeter
    from harness.models import load_model, resolve_device, resolve_dtype
    from harness.tasks import TaskHandle
    from harness.trainer import LoraSettings, train_lora

    device = resolve_device("auto")
    cfg = compose(f"model={args.model}", f"task={args.task}")
    loaded = load_model(cfg.model, device, resolve_dtype("auto", device))
    task = TaskHandle.from_cfg(cfg.task)
    examples = [task.labeled_example(d) for d in task.sample_pool(256, 0)]
    settings = LoraSettings(batch_size=args.batch_size)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, steps in (("warm-up", 2), ("timed", args.steps)):
            budget = TrainingBudget(Budget("bench", "steps", steps, 0))
            with PhaseMeter("train", device) as meter:
                res = train_lora(loaded.model, loaded.tokenizer, examples, budget, settings, Path(tmp) / label,
                                 meter, seed=1, progress=False)
            results[label] = (res, meter.cost)
    res, cost = results["timed"]
    print(f"\nLoRA trainer: {args.model}, rank 8, 7 projections, batch {args.batch_size}, {res.steps} timed steps, "
          f"{cost.device}\n")
    print("| metric | value |")
    print("|---|---|")
    print(f"| tokens/s (real tokens) | {res.tokens / cost.wall_s:.0f} |")
    print(f"| tokens/s (positions incl. padding) | {cost.tokens / cost.wall_s:.0f} |")
    print(f"| step time (s) | {cost.wall_s / res.steps:.3f} |")
    print(f"| measured FLOP/s | {cost.flops_measured / cost.wall_s:.3e} |")
    print(f"| measured / analytic FLOPs | {cost.flops_measured / cost.flops_analytic:.3f} |")
    print(f"| peak memory ({cost.peak_mem_kind}) | {cost.peak_mem_bytes / 2**30:.2f} GiB |")
    print("reproduce: python benchmarks/bench_trainer.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
