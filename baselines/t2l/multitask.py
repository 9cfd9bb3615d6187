"""`multitask_lora`: one LoRA trained by the shared trainer on the union of the library tasks' pools: the T2L paper's
main baseline (what a generator must beat to show it does more than learn a generic multi-task adapter).

It reads the same library settings as `dnd` and `t2l` (universe, library, targets, collect, library_preset): the
same tasks, the same LoRA layout and rate, and by default as many optimizer steps as the whole library costs
(`steps: null` = collect.steps × library tasks), so its one-off cost matches the library's. Trained once per
library (cached by content key, under a lock) and shared by every target whose library it is; the target's data
is never in it (its dataset may not be in the library: the leakage check of DnD).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from baselines.dnd.library import CollectSettings, task_handle
from baselines.t2l.config import LibrarySettings
from baselines.dnd.strategy import _LibraryStrategy, library_tasks, shared_by
from harness import artifacts, provenance, store
from harness.budget import Budget, TrainingBudget
from harness.config_checks import as_int
from harness.console import say
from harness.costs import PhaseCost, PhaseMeter
from harness.models import adapter_problem
from harness.strategy import AdaptContext, Adaptation, Prerequisite
from harness.strategy_settings import settings_from
from harness.trainer import predict_train_flops, train_lora

INFO = "multitask.json"


@dataclass(frozen=True)
class MultitaskSettings(LibrarySettings):
    """configs/strategy/multitask_lora.yaml: the library's keys, and the run's length."""

    steps: int | None  # null: collect.steps × the number of library tasks (the library's whole training)
    seed: int

    def __post_init__(self) -> None:
        super().__post_init__()
        as_int(self.steps, "strategy.steps", minimum=1, allow_none=True)


def _key(model_cfg: dict, tasks, settings: CollectSettings, steps: int, seed: int, model_env: dict) -> str:
    model_cfg = {k: v for k, v in model_cfg.items() if k not in ("dnd_preset", "t2l_preset")}
    identity = {"model": model_cfg, "tasks": {t.name: t.pool_info.fingerprints for t in tasks},
                "collect": asdict(settings), "steps": steps, "seed": seed, "environment": model_env}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class MultitaskLora(_LibraryStrategy):
    def _settings(self, settings) -> MultitaskSettings:
        return settings_from(MultitaskSettings, settings)

    def prerequisites(self, cfg) -> list[Prerequisite]:
        return []  # it trains one LoRA on the library tasks' data, not the library's LoRAs

    def uses_seed(self, settings) -> bool:
        return False  # one LoRA per library; `seed` in the config orders its batches

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        s = self._settings(ctx.settings)
        collect = s.resolved_collect(ctx.model_cfg, ctx.model_name)
        names = library_tasks(ctx.settings, ctx.task.name)
        tasks = [task_handle(n) for n in names]
        steps = s.steps or collect.steps * len(names)
        lora = replace(collect.lora(), checkpoint_every=None, checkpoint_start=None)
        per_task = {t.name: [t.training_example(d) for d in t.sample_pool(None, s.seed)] for t in tasks}
        examples = [e for name in names for e in per_task[name]]
        random.Random(s.seed).shuffle(examples)
        per_query, n_lora = self._serving(ctx, collect)
        key = _key(ctx.model_cfg, tasks, collect, steps, s.seed, provenance.environment(ctx.model_cfg))
        folder = Path(ctx.shared_dir) / "multitask" / f"{'+'.join(names)}__{key[:10]}"
        share = shared_by(ctx.settings, ctx.task.name, names)
        cached = _read(folder, key)
        flops = cached.flops_measured if cached else predict_train_flops(ctx.model, ctx.tokenizer, examples, lora,
                                                                         steps, s.seed)
        self._check_plan(ctx, [{"flops_measured": flops, "wall_s": cached.wall_s if cached else 0.0,
                                "shared_by": share}], 0.0, per_query,
                         f"the multi-task LoRA on {len(names)} library tasks")

        def train(work: Path) -> None:
            say(f"multitask_lora: training one LoRA on the pools of {', '.join(names)} ({steps} steps)")
            budget = TrainingBudget(Budget(f"multitask_{steps}_steps", "steps", steps, 0, "excluded", "recompute"))
            with PhaseMeter("collect", ctx.device) as meter:
                result = train_lora(ctx.model, ctx.tokenizer, examples, budget, lora, work, meter, seed=s.seed,
                                    progress=ctx.progress, init_seed=collect.init_seed(names[0]))
            meter.cost.details.update({"tasks": names, "steps": result.steps, "examples": len(examples),
                                       "first_loss": result.losses[0], "final_loss": result.losses[-1]})
            store.write_json_atomic(work / INFO, {"key": key, "tasks": names, "cost": meter.cost.to_dict()})

        cost, reused = artifacts.get_or_build(folder, lambda f: _read(f, key), train,
                                              f"the multi-task LoRA on {', '.join(names)}", say)
        cost.shared_by = share
        cost.artifact = f"multitask-lora/{key[:16]}"
        cost.details = {**cost.details, "reused": reused}
        with PhaseMeter("generate", ctx.device) as meter:  # serving the cached adapter: nothing to compute
            adapter = folder / "adapter"
        use = self._charge(ctx, meter.cost, [cost], per_query, "the multi-task LoRA (trained once per library)")
        return Adaptation(kind="adapter", adapter_dir=str(adapter), labels_used=0, costs=[cost, meter.cost],
                          budget=use, per_query_extra_flops=per_query, lora_params=n_lora,
                          details={"library": names, "steps": steps,
                                   "examples": {name: len(per_task[name]) for name in names},
                                   "final_loss": cost.details.get("final_loss")})


def _read(folder: Path, key: str) -> PhaseCost | None:
    try:
        info = json.loads((Path(folder) / INFO).read_text())
    except (OSError, ValueError):
        return None
    if info.get("key") != key or adapter_problem(Path(folder) / "adapter"):
        return None
    return PhaseCost.from_dict(info["cost"])
