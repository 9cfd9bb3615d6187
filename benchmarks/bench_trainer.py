"""Real-token throughput of the shared LoRA trainer vs a plain peft loop on the same batches (SmolLM2-135M).

    python benchmarks/bench_trainer.py [--rounds 5] [--steps 64] [--batch-size 4] [--task arc_easy]
                                       [--trainer PATH] [--threads N]

Each round trains a fresh rank-8 LoRA (configs/strategy/lora.yaml) for `--steps` steps twice, interleaved,
in alternating order: once with `train_lora` (budget, schedule, FLOP metering) and once with a plain peft
loop (forward, backward, clip, AdamW step; nothing else) fed the very batches the trainer draws, so both
see the same examples in the same order with the same padding. Reported: the median over rounds of real
(non-padding) tokens/s and of the per-round ratio. `--trainer PATH` benchmarks another copy of
harness/trainer.py, e.g. `git show HEAD~1:harness/trainer.py > /tmp/old.py` for a before/after.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=64)  # short runs are mostly live-counted steps
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--trainer", default=None, help="a copy of harness/trainer.py to benchmark instead")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared, loaded machine: "
                        "oversubscribed OpenMP threads spin and make every timing noise)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from harness.budget import Budget, TrainingBudget
    from harness.cli import compose_config
    from harness.costs import PhaseMeter
    from harness.models import load_model, resolve_device, resolve_dtype
    from harness.tasks import TaskHandle
    from baselines.lora import LoraTuningSettings
    from harness.strategy_settings import settings_from

    trainer = _trainer_module(args.trainer)
    device = resolve_device("auto")
    cfg = compose_config([f"model={args.model}", f"task={args.task}", "strategy=lora"])
    loaded = load_model(cfg.model, device, resolve_dtype("auto", device))
    task = TaskHandle.from_cfg(cfg.task)
    examples = [task.training_example(d) for d in task.sample_pool(256, 0)]
    settings = replace(settings_from(LoraTuningSettings, cfg.strategy).trainer(), batch_size=args.batch_size)
    tok = loaded.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [trainer.encode_example(tok, p, c, settings.max_length) for p, c in examples]
    draw = trainer._Batches(encoded, settings.batch_size, 1)
    batches = [trainer._collate(draw.next(), pad_id) for _ in range(args.steps)]  # what train_lora(seed=1) trains on
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    positions = sum(b["input_ids"].numel() for b in batches)

    def ours(tmp: Path, steps: int) -> tuple[float, object]:
        budget = TrainingBudget(Budget("bench", "steps", steps, 0, "excluded", "cached"))
        with PhaseMeter("train", device) as meter:
            trainer.train_lora(loaded.model, tok, examples, budget, settings, tmp, meter, seed=1, progress=False)
        # the training loop alone; a trainer without that figure reports its whole phase (set-up and saving too)
        return meter.cost.details.get("train_loop_s", meter.cost.wall_s), meter.cost

    ours(Path(tempfile.mkdtemp()), 2)  # warm-up, not timed
    _plain_peft_loop(loaded.model, device, batches[:2], settings)
    rows = []
    for r in range(args.rounds):
        order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
        got = {}
        for which in order:
            if which == "ours":
                with tempfile.TemporaryDirectory() as tmp:
                    got["ours"], cost = ours(Path(tmp), args.steps)
            else:
                got["plain"] = _plain_peft_loop(loaded.model, device, batches, settings)
        rows.append((real / got["ours"], real / got["plain"]))
        print(f"round {r}: ours {rows[-1][0]:.0f} real tok/s, plain {rows[-1][1]:.0f} real tok/s", file=sys.stderr)
    ours_s, plain_s = statistics.median(o for o, _ in rows), statistics.median(p for _, p in rows)
    ratio = statistics.median(o / p for o, p in rows)
    print(f"\nLoRA trainer vs plain peft loop: {args.model}, rank {settings.rank}, {len(settings.target_modules)} "
          f"projections, batch {args.batch_size}, {args.steps} steps x {args.rounds} interleaved rounds, "
          f"{cost.device}, trainer {args.trainer or 'harness/trainer.py'}\n")
    print("| metric | value |")
    print("|---|---|")
    print(f"| real tokens / positions in the batches trained on | {real} / {positions} ({1 - real / positions:.1%} "
          f"padding) |")
    print(f"| trainer: real tokens/s (median) | {ours_s:.0f} |")
    print(f"| plain peft loop, same batches: real tokens/s (median) | {plain_s:.0f} |")
    print(f"| **trainer / plain loop (median of per-round ratios)** | **{ratio:.2f}x** |")
    print(f"| per-round ratios | {', '.join(f'{o / p:.2f}' for o, p in rows)} |")
    print(f"| measured / analytic FLOPs (last round) | {cost.flops_measured / cost.flops_analytic:.3f} |")
    print(f"| steps counted live / derived by the exact fit / reused by shape (last round) | "
          f"{cost.details.get('flops_counted_live')} / {cost.details.get('flops_derived_by_fit')} / "
          f"{cost.details.get('flops_reused_by_shape')} |")
    extra = {k: cost.details[k] for k in ("adapter_setup_s", "adapter_save_s") if k in cost.details}
    if extra:
        print(f"| set-up / saving, outside the phase's wall-clock (s) | {extra['adapter_setup_s']:.2f} / "
              f"{extra['adapter_save_s']:.2f} |")
    print(f"| peak memory ({cost.peak_mem_kind}) | {cost.peak_mem_bytes / 2**30:.2f} GiB |")
    print("reproduce: python benchmarks/bench_trainer.py " + " ".join(sys.argv[1:]))


def _trainer_module(path: str | None):
    if path is None:
        import harness.trainer

        return harness.trainer
    spec = importlib.util.spec_from_file_location("trainer_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _plain_peft_loop(model, device, batches: list, settings) -> float:
    """The same LoRA steps written plainly (no budget, no FLOP counting, no schedule); returns the loop's seconds."""
    import torch
    from peft import LoraConfig, get_peft_model

    from harness.costs import synchronize

    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                                                  lora_dropout=settings.dropout, bias="none",
                                                  target_modules=list(settings.target_modules), task_type="CAUSAL_LM"))
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        peft_model(**{k: v.to(device) for k, v in batch.items()}).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    elapsed = time.perf_counter() - start
    peft_model.unload()
    model.eval()
    return elapsed


if __name__ == "__main__":
    main()
