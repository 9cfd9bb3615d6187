"""Tokens/s of the shared LoRA trainer on SmolLM2-135M (CPU here; GPU where one is visible).

    python benchmarks/bench_trainer.py [--steps 12] [--batch-size 4] [--task arc_easy]

Trains rank-8 LoRA on all attention and MLP projections for a fixed number of steps (the first two are
warm-up and not timed) and prints tokens/s (real and padded), step time and measured FLOP/s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    from harness.budget import Budget, TrainingBudget
    from harness.cli import compose_config
    from harness.costs import PhaseMeter
    from harness.models import load_model, resolve_device, resolve_dtype
    from harness.tasks import TaskHandle
    from baselines.lora import LoraTuningSettings
    from harness.strategy_settings import settings_from
    from harness.trainer import train_lora

    device = resolve_device("auto")
    cfg = compose_config([f"model={args.model}", f"task={args.task}", "strategy=lora",
                          f"strategy.batch_size={args.batch_size}"])
    loaded = load_model(cfg.model, device, resolve_dtype("auto", device))
    task = TaskHandle.from_cfg(cfg.task)
    examples = [task.labeled_example(d) for d in task.sample_pool(256, 0)]
    settings = settings_from(LoraTuningSettings, cfg.strategy).trainer()  # the values of configs/strategy/lora.yaml
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, steps in (("warm-up", 2), ("timed", args.steps)):
            budget = TrainingBudget(Budget("bench", "steps", steps, 0, "excluded"))
            with PhaseMeter("train", device) as meter:
                res = train_lora(loaded.model, loaded.tokenizer, examples, budget, settings, Path(tmp) / label,
                                 meter, seed=1, progress=False)
            results[label] = (res, meter.cost)
    res, cost = results["timed"]
    plain_tok_s = _plain_peft_loop(loaded.model, device, args.batch_size,
                                   round(cost.tokens / res.steps / args.batch_size), res.steps)
    print(f"\nLoRA trainer: {args.model}, rank 8, 7 projections, batch {args.batch_size}, {res.steps} timed steps, "
          f"{cost.device}\n")
    print("| metric | value |")
    print("|---|---|")
    print(f"| tokens/s (real tokens) | {res.tokens / cost.wall_s:.0f} |")
    print(f"| tokens/s (positions incl. padding) | {cost.tokens / cost.wall_s:.0f} |")
    print(f"| step time (s) | {cost.wall_s / res.steps:.3f} |")
    print(f"| plain peft loop, same shapes, no metering: tokens/s (positions) | {plain_tok_s:.0f} |")
    print(f"| measured FLOP/s | {cost.flops_measured / cost.wall_s:.3e} |")
    print(f"| measured / analytic FLOPs | {cost.flops_measured / cost.flops_analytic:.3f} |")
    print(f"| peak memory ({cost.peak_mem_kind}) | {cost.peak_mem_bytes / 2**30:.2f} GiB |")
    print("reproduce: python benchmarks/bench_trainer.py " + " ".join(sys.argv[1:]))


def _plain_peft_loop(model, device, batch: int, width: int, steps: int) -> float:
    """The same LoRA step written plainly (no budget, no FLOP counting, no schedule), for comparison."""
    import torch
    from peft import LoraConfig, get_peft_model

    from harness.costs import synchronize
    from harness.trainer import DEFAULT_TARGETS

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(DEFAULT_TARGETS),
                                                  task_type="CAUSAL_LM"))
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, 1000, (batch, width), device=device)
    for i in range(steps + 2):
        if i == 2:
            synchronize(device)
            start = time.perf_counter()
        peft_model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    elapsed = time.perf_counter() - start
    peft_model.unload()
    return steps * batch * width / elapsed


if __name__ == "__main__":
    main()
