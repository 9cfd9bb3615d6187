"""lora: LoRA fine-tuning through the shared trainer, full-shot (the whole pool) or few-shot (k examples)."""
from __future__ import annotations

from pathlib import Path

from harness.budget import TrainingBudget
from harness.costs import PhaseMeter
from harness.errors import HarnessError
from harness.strategy import AdaptContext, Adaptation, register_strategy
from harness.trainer import LoraSettings, train_lora


@register_strategy("lora")
class LoraTuning:
    def validate(self, settings) -> None:
        shots = settings.get("shots")
        if shots is not None and int(shots) < 1:
            raise HarnessError(f"strategy.shots must be >= 1 for few-shot LoRA, or null for full-shot (got {shots})")
        lora = LoraSettings.from_cfg(settings)
        if lora.rank < 1 or lora.batch_size < 1 or lora.lr <= 0:
            raise HarnessError("strategy.rank, strategy.batch_size and strategy.lr must be positive")

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        shots = ctx.settings.get("shots")
        docs = ctx.task.sample_pool(int(shots) if shots is not None else None, ctx.seed)
        examples = [ctx.task.labeled_example(d) for d in docs]
        settings = LoraSettings.from_cfg(ctx.settings)
        budget = TrainingBudget(ctx.budget)
        with PhaseMeter("train", ctx.device) as meter:
            result = train_lora(ctx.model, ctx.tokenizer, examples, budget, settings, Path(ctx.workdir), meter,
                                seed=ctx.seed, progress=ctx.progress)
        meter.cost.details.update({"steps": result.steps, "examples_seen": result.examples_seen,
                                   "real_tokens": result.tokens,
                              "final_loss": result.losses[-1], "first_loss": result.losses[0]})
        return Adaptation(
            kind="adapter", adapter_dir=result.adapter_dir, labels_used=min(result.examples_seen, len(examples)),
            costs=[meter.cost], budget=budget.use,
            details={"mode": "few-shot" if shots is not None else "full-shot", "pool_examples": len(examples),
                     "steps": result.steps, "examples_seen": result.examples_seen,
                     "trajectory": result.trajectory, "losses": result.losses})
