"""lora: LoRA fine-tuning through the shared trainer, full-shot (the whole pool) or few-shot (k examples)."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from harness.budget import BudgetUse, TrainingBudget
from harness.config_checks import as_float, as_int
from harness.costs import PhaseCost, PhaseMeter
from harness.errors import BudgetTooSmall, HarnessError
from harness.pricing import lora_serving
from harness.strategy import AdaptContext, Adaptation, Strategy
from harness.strategy_settings import settings_from
from harness.trainer import SCHEDULES, LoraSettings, TrainResult, train_lora


@dataclass
class LoraTuningSettings(LoraSettings):
    """configs/strategy/lora.yaml: the trainer's settings plus which examples it sees and for how long."""

    shots: int | None  # k examples from the pool; null: the whole pool (full-shot)
    epochs: float | None  # passes over the examples; null: until the budget is spent
    share_adapter: bool  # on a steps or examples budget, cells whose training is identical train it once

    def __post_init__(self) -> None:
        as_int(self.shots, "strategy.shots (null for full-shot)", minimum=1, allow_none=True)
        for key in ("rank", "batch_size", "max_length"):
            as_int(getattr(self, key), f"strategy.{key}", minimum=1)
        as_int(self.max_steps, "strategy.max_steps", minimum=1, allow_none=True)
        as_int(self.checkpoint_every, "strategy.checkpoint_every", minimum=1, allow_none=True)
        as_float(self.lr, "strategy.lr", positive=True)
        if self.schedule not in SCHEDULES:
            raise HarnessError(f"strategy.schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if self.epochs is not None:
            as_float(self.epochs, "strategy.epochs (null: train until the budget is spent)", positive=True)
        as_float(self.alpha, "strategy.alpha", positive=True)

    def trainer(self) -> LoraSettings:
        """The trainer's part alone (what train_lora logs with the adapter)."""
        return LoraSettings(**{f.name: getattr(self, f.name) for f in fields(LoraSettings)})


class LoraTuning(Strategy):
    def adapts_images(self, settings) -> bool:
        return True  # the shared trainer takes images through the processor; LoRA on the language model

    def validate(self, settings) -> None:
        settings_from(LoraTuningSettings, settings)

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        b = ctx.budget
        tuning = settings_from(LoraTuningSettings, ctx.settings)
        shots = tuning.shots
        docs, labels_cut = labeled_allowed(b, ctx.task.sample_pool(shots, ctx.seed))
        examples = [ctx.task.training_example(d) for d in docs]
        result, cost, use, per_query_extra, n_lora = tune(ctx, tuning, examples, labels_cut=labels_cut)
        labels = min(result.sequences_processed, len(examples))
        return Adaptation(
            kind="adapter", adapter_dir=result.adapter_dir, labels_used=labels, costs=[cost], budget=use,
            per_query_extra_flops=per_query_extra, lora_params=n_lora,
            details={"mode": "few-shot" if shots is not None else "full-shot", "pool_examples": len(examples),
                     "steps": result.steps, "sequences_processed": result.sequences_processed,
                     "trajectory": result.trajectory, "losses": result.losses})


def labeled_allowed(b, docs: list[dict]) -> tuple[list[dict], str]:
    """The drawn pool documents an `examples` budget lets a cell train on (the first `amount` of the draw; other
    budgets: all), and a note when it cut some."""
    if b.kind != "examples":
        return docs, ""
    allowed = int(b.amount)
    if allowed < 1:
        raise BudgetTooSmall(f"budget {b.name} allows no labeled example: set budget.amount >= 1")
    if len(docs) <= allowed:
        return docs, ""
    return docs[:allowed], f"the budget allows {allowed} labeled examples of the {len(docs)} drawn"


def tune(ctx: AdaptContext, tuning: LoraTuningSettings, examples: list[tuple[str, str]], labels_cut: str = "",
         spent_before: float = 0.0, before_what: str = ""):
    """Train one LoRA on `examples` through the shared trainer, within what the budget leaves after `spent_before`
    (in the budget's unit: what earlier phases of the same adaptation, e.g. augmentation, already cost).

    Returns (TrainResult, the train phase's cost, BudgetUse of the whole adaptation, per-query extra FLOPs of
    serving the adapter, its weights)."""
    b = ctx.budget
    settings = tuning.trainer()
    epochs = tuning.epochs
    if epochs is None and b.kind == "examples":
        epochs = 1  # the labels are fixed; one pass over them unless strategy.epochs asks for more
    if epochs is not None:  # e.g. the DnD paper's few-shot runs: 3 epochs at batch 1
        cap = max(1, math.ceil(float(epochs) * len(examples) / settings.batch_size))
        settings = replace(settings, max_steps=min(cap, settings.max_steps or cap))
    # The adapter is served unmerged, so every query pays 2·N_lora per token it processes (generated
    # ones included): on a FLOP budget that share of the horizon is reserved before training.
    per_query_extra, n_lora = lora_serving(ctx.pricing, ctx.model, settings)
    reserved = b.horizon * per_query_extra if b.kind == "flops" else 0.0
    before = spent_before if b.kind in ("flops", "seconds") else 0.0
    if reserved + before >= b.amount:
        what = f" after {before_what} (~{before:.3g} {b.kind})" if before else ""
        raise BudgetTooSmall(f"budget {b.name}: serving the adapter to {b.horizon} queries (~{reserved:.3g} "
                             f"FLOPs){what} leaves nothing to train with: raise budget.amount or lower budget.horizon")
    budget = TrainingBudget(b, reserved=reserved + before)

    def train(out: Path) -> tuple[TrainResult, PhaseCost, BudgetUse]:
        with PhaseMeter("train", ctx.device) as meter:
            done = train_lora(ctx.model, ctx.tokenizer, examples, budget, settings, out, meter, seed=ctx.seed,
                              progress=ctx.progress)
        return done, meter.cost, budget.use

    shared = tuning.share_adapter and ctx.shared_dir is not None and b.kind in ("steps", "examples")
    if shared:  # the training is a function of its inputs: identical cells (e.g. one pool's test splits) share it
        result, cost, trained, reused = _shared_training(ctx, examples, settings, train)
        cost.details["reused"] = reused
    else:
        result, cost, trained = train(Path(ctx.workdir))
    labels = min(result.sequences_processed, len(examples))
    cost.details.update({"steps": result.steps, "sequences_processed": result.sequences_processed,
                         "real_tokens": result.tokens, "first_loss": result.losses[0], "final_loss": result.losses[-1]})
    reason = "; ".join(r for r in (labels_cut, trained.stop_reason) if r)
    if reserved:
        reason += f" (with {reserved:.3g} FLOPs reserved for serving the adapter over the horizon)"
    if before:
        reason += f" (after {before_what}: {before:.3g} {b.kind})"
    use = BudgetUse.of(b, own=labels if b.kind == "examples" else trained.spent + before, queries=reserved,
                       bound=trained.bound or bool(labels_cut), reason=reason)
    return result, cost, use, per_query_extra, n_lora


def _shared_training(ctx: AdaptContext, examples, settings: LoraSettings, train):
    """(TrainResult, cost, budget use, reused): the adapter trained once per key under the artifact lock in the
    model's shared folder; the key holds everything the training reads (code, model, examples, settings, seed,
    budget). A reused adapter is charged what its training cost when it was built."""
    from harness import artifacts, provenance, store

    b = ctx.budget
    key = hashlib.sha256(json.dumps({"code": provenance.code_fingerprint()["sha256"], "model": ctx.model_cfg,
                                     "examples": examples, "settings": asdict(settings), "seed": ctx.seed,
                                     "budget": [b.kind, b.amount]}, sort_keys=True, default=str).encode()).hexdigest()
    folder = Path(ctx.shared_dir) / "adapters" / key[:20]

    def read(found: Path):
        try:
            saved = json.loads((found / "training.json").read_text())
        except (OSError, ValueError):
            return None
        result = TrainResult(**{**saved["result"], "adapter_dir": str(found / "adapter"),
                                "trajectory": [str(found / p) for p in saved["result"]["trajectory"]]})
        return result, PhaseCost.from_dict(saved["cost"]), BudgetUse(**saved["budget"])

    def make(work: Path) -> None:
        result, cost, use = train(work)
        relative = {**asdict(result), "adapter_dir": "adapter",
                    "trajectory": [str(Path(p).relative_to(work)) for p in result.trajectory]}
        store.write_json_atomic(work / "training.json", {"key": key, "result": relative, "cost": cost.to_dict(),
                                                         "budget": asdict(use)})

    (result, cost, use), reused = artifacts.get_or_build(folder, read, make, f"the LoRA of {ctx.task.name} (seed "
                                                                              f"{ctx.seed}, shared)")
    return result, cost, use, reused
