"""The LoRA library DnD learns from (the `collect` phase), cached by content key.

For each library task a LoRA is trained with the shared trainer; like the paper, the run's last
`checkpoints` optimizer steps are all saved (a trajectory of consecutive checkpoints). An entry is
keyed by the model, the task's data fingerprints and the collect settings, built through
`harness.artifacts` (a lock, a `.partial` folder, one rename), so every target and every control
that trains on the same task reuses it, even when they run at once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from harness import artifacts, provenance, store
from harness.budget import Budget, TrainingBudget
from harness.costs import PhaseCost, PhaseMeter
from harness.errors import HarnessError
from harness.models import adapter_problem
from harness.settings import CONFIG_DIR
from harness.tasks import TaskHandle
from harness.config_checks import as_float, as_int
from harness.strategy_settings import settings_from
from harness.trainer import LoraSettings, predict_train_flops, train_lora

ENTRY = "entry.json"
INITS = ("shared", "per_task")


RECIPE_DIR = CONFIG_DIR / "dnd_recipe"
RECIPE_KEYS = {"collect": ("steps", "checkpoints", "batch_size", "lr", "max_length"),
               "meta_train": ("steps", "batch_size", "lr")}


def recipe(preset_name: str) -> dict:
    """A generator preset's recipe, configs/dnd_recipe/<preset>.yaml: the collect and meta_train values that
    dnd.yaml leaves null (a value set in dnd.yaml, or on the command line, overrides the recipe's)."""
    path = RECIPE_DIR / f"{preset_name}.yaml"
    if not path.is_file():
        raise HarnessError(f"generator preset {preset_name} has no recipe {path}: add one, or set every null "
                           f"key of strategy.collect and strategy.meta_train")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for group, keys in RECIPE_KEYS.items():
        given = sorted((data.get(group) or {}).keys())
        if given != sorted(keys):
            raise HarnessError(f"recipe {path} must set {group}: {', '.join(keys)} (it sets {', '.join(given)})")
    return data


def recipes_digest() -> str:
    """sha256 over every recipe file (name and bytes). A cell's DnD settings are its config plus the recipe of
    the preset it resolves to, which may come from the model config; keying the cell by all recipes means an
    edited recipe never leaves a finished cell standing for settings it did not run with."""
    digest = hashlib.sha256()
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def fill_from_recipe(settings, preset_name: str, group: str):
    """`settings` (a collect or meta_train group) with its null recipe keys taken from the preset's recipe."""
    from dataclasses import replace

    missing = {k for k in RECIPE_KEYS[group] if getattr(settings, k) is None}
    if not missing:
        return settings
    values = recipe(preset_name)[group]
    return replace(settings, **{k: values[k] for k in missing})


@dataclass(frozen=True)
class CollectSettings:
    """dnd.yaml's `collect`: how each library LoRA is trained (values in the YAML only; they key the entry).
    Keys left null there come from the generator preset's recipe (`for_preset`)."""

    steps: int | None  # optimizer steps in all: to a useful point at a constant rate, then the trajectory
    checkpoints: int | None  # the last this-many optimizer steps are all saved (the trajectory)
    batch_size: int | None
    lr: float | None
    rank: int | None  # None: the generator preset's rank (the rank of the LoRAs it emits): see `for_preset`
    alpha: float | None  # None: 2 x rank, as the paper (r8 / alpha 16, r16 / alpha 32)
    max_length: int | None
    seed: int
    init: str  # "shared": every task's LoRA starts from the A drawn from `seed`; "per_task": from its own
    targets: list[str] | None  # None: the generator preset's LoRA targets (the modules it emits)
    check_items: int  # eval items on which each library LoRA is scored against base on its own task (0: none)

    def __post_init__(self) -> None:
        as_int(self.check_items, "strategy.collect.check_items", minimum=0)
        if self.init not in INITS:
            raise HarnessError(f"strategy.collect.init must be one of {', '.join(INITS)} (got {self.init!r})")
        for key in ("steps", "checkpoints", "batch_size", "max_length", "rank"):
            as_int(getattr(self, key), f"strategy.collect.{key}", minimum=1, allow_none=True)
        if self.lr is not None:
            as_float(self.lr, "strategy.collect.lr", positive=True)
        if self.checkpoints is not None and self.steps is not None and self.checkpoints > self.steps:
            raise HarnessError(f"strategy.collect.checkpoints must be in 1..collect.steps "
                               f"(got {self.checkpoints} of {self.steps})")

    @classmethod
    def from_cfg(cls, cfg) -> "CollectSettings":
        """Kept for callers not yet on `DnDSettings` (settings_from(DnDSettings, node).collect); same checks."""
        return settings_from(cls, cfg, "strategy.collect")

    def for_preset(self, preset) -> "CollectSettings":
        """These settings resolved for a generator preset: null recipe keys from its recipe; rank, alpha and
        targets from the preset itself (the library LoRAs must have the rank and the modules it emits, so `null`
        takes the preset's, and an explicit value that differs is refused)."""
        from dataclasses import replace

        if self.rank is not None and self.rank != preset.rank:
            raise HarnessError(f"strategy.collect.rank={self.rank}, but generator preset {preset.name} emits rank "
                               f"{preset.rank} LoRAs: set strategy.collect.rank=null (the preset's rank)")
        if self.targets is not None and sorted(self.targets) != sorted(preset.targets):
            raise HarnessError(f"strategy.collect.targets={list(self.targets)}, but generator preset {preset.name} "
                               f"emits LoRAs on {list(preset.targets)}: set strategy.collect.targets=null")
        rank = preset.rank
        return fill_from_recipe(replace(self, rank=rank, alpha=2 * rank if self.alpha is None else self.alpha,
                                        targets=list(preset.targets)), preset.name, "collect")

    def task_seed(self, task: str) -> int:
        """The trainer's seed for `task`'s library LoRA (its batch order): `seed` offset by a stable hash of the
        task's name."""
        return self.seed + int(hashlib.sha256(task.encode()).hexdigest()[:8], 16) % 1_000_003

    def init_seed(self, task: str) -> int:
        """The seed of `task`'s initial LoRA A: `seed` for every task under `init: shared` (the paper's
        LLaMA-Factory runs seed every task's model with 42 before adding the LoRA, so all its library LoRAs start
        from one A and their B's live in one coordinate system), the task's own seed under `per_task`."""
        return self.seed if self.init == "shared" else self.task_seed(task)

    def lora(self) -> LoraSettings:
        """The trainer's settings: `collect`'s (the preset's targets, for the paper's presets every attention and
        MLP projection), and the paper's recipe for the rest (no dropout or weight decay, lora.yaml's 3 % warm-up),
        fixed so that `collect` keys the entry.
        The rate stays constant after the warm-up, as in the paper's resumed runs: a cosine that ends at 0 made
        the saved last steps nearly identical (issue 14)."""
        if any(getattr(self, k) is None for k in ("rank", "alpha", "targets", *RECIPE_KEYS["collect"])):
            raise HarnessError("strategy.collect: its null keys are resolved from the generator preset first "
                               "(CollectSettings.for_preset)")
        return LoraSettings(rank=self.rank, alpha=self.alpha, dropout=0.0, target_modules=tuple(self.targets),
                            lr=self.lr,
                            warmup_frac=0.03, schedule="constant", weight_decay=0.0, batch_size=self.batch_size,
                            max_length=self.max_length, max_steps=None, checkpoint_every=1,
                            checkpoint_start=self.steps - self.checkpoints + 1)


@dataclass
class LibraryEntry:
    task: str
    key: str
    folder: Path
    checkpoints: list[Path]
    adapter: Path  # the final LoRA of the run (the paper's "training LoRA" of this task)
    cost: PhaseCost
    checks: dict = field(default_factory=dict)  # own_task (library_check) and trajectory (trajectory_spread)

    def state(self, path: Path | None = None) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(Path(path or self.adapter) / "adapter_model.safetensors"))


def task_handle(name: str) -> TaskHandle:
    path = CONFIG_DIR / "task" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
        raise HarnessError(f"DnD library task {name!r} has no config in configs/task/; known: {', '.join(known)}")
    return TaskHandle.from_cfg(OmegaConf.load(path))


def entry_key(model_cfg: dict, task: TaskHandle, settings: CollectSettings) -> str:
    # which generator or hypernetwork reads the LoRA is not its identity
    model_cfg = {k: v for k, v in model_cfg.items() if k not in ("dnd_preset", "t2l_preset")}
    identity = {"model": model_cfg, "task": task.name, "lm_eval_task": task.lm_eval_name,
                "data": task.pool_info.fingerprints, "collect": asdict(settings),
                "environment": provenance.environment(model_cfg)}  # code, package versions, the model's weights
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def library_root(runs_dir: Path, model_name: str) -> Path:
    return Path(runs_dir) / model_name / "_dnd"


def _read(folder: Path, key: str) -> LibraryEntry | None:
    try:
        data = json.loads((folder / ENTRY).read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        return None
    entry = LibraryEntry(data["task"], key, folder, [folder / p for p in data["checkpoints"]],
                         folder / data["adapter"], PhaseCost.from_dict(data["cost"]), data.get("checks") or {})
    if any(adapter_problem(path) for path in [entry.adapter, *entry.checkpoints]):
        return None  # a damaged adapter (a truncated copy, a full disk): the entry is trained again
    return entry


def _folder(root: Path, task: TaskHandle, key: str) -> Path:
    return Path(root) / "library" / f"{task.name}__{key[:10]}"


def cached_entry(task: TaskHandle, model_cfg: dict, settings: CollectSettings, root: Path) -> LibraryEntry | None:
    """The library entry of `task` if it was built already, else None (nothing is trained)."""
    key = entry_key(model_cfg, task, settings)
    return _read(_folder(root, task, key), key)


def predict_collect_flops(task: TaskHandle, model, tokenizer, settings: CollectSettings) -> float:
    """Analytic FLOPs of training `task`'s library LoRA, before training it (the same batches)."""
    examples = [task.training_example(d) for d in task.sample_pool(None, settings.seed)]
    return predict_train_flops(model, tokenizer, examples, settings.lora(), settings.steps,
                               settings.task_seed(task.name))


def collect_entry(task: TaskHandle, model, tokenizer, model_cfg: dict, settings: CollectSettings,
                  root: Path, device, progress: bool = True, say=print) -> tuple[LibraryEntry, bool]:
    """The library entry of `task` (trained now unless cached); returns (entry, reused)."""
    key = entry_key(model_cfg, task, settings)

    def train(work: Path) -> None:
        say(f"dnd collect: training the library LoRA of {task.name} ({settings.steps} steps, "
            f"last {settings.checkpoints} saved)")
        examples = [task.training_example(d) for d in task.sample_pool(None, settings.seed)]
        steps = Budget(f"collect_{settings.steps}_steps", "steps", settings.steps, 0, "excluded", "recompute")
        budget = TrainingBudget(steps)  # no queries: neither one-off policy nor ICL pricing applies
        with PhaseMeter("collect", device) as meter:
            result = train_lora(model, tokenizer, examples, budget, settings.lora(), work, meter,
                                seed=settings.task_seed(task.name), progress=progress,
                                init_seed=settings.init_seed(task.name))
        meter.cost.details.update({"task": task.name, "steps": result.steps, "seed": settings.task_seed(task.name),
                                   "init_seed": settings.init_seed(task.name),
                                   "sequences_processed": result.sequences_processed,
                                   "first_loss": result.losses[0], "final_loss": result.losses[-1],
                                   "checkpoints": len(result.trajectory), "entry_key": key})
        rel = [str(Path(p).relative_to(work)) for p in result.trajectory]
        # Diagnostics, not part of the phase's cost: does the LoRA beat base on its own task, how far do its
        # saved steps move?
        checks = {"trajectory": trajectory_spread([Path(p) for p in result.trajectory])}
        if settings.check_items:
            say(f"dnd collect: scoring the library LoRA of {task.name} against base on {settings.check_items} of "
                f"its own eval items")
            checks["own_task"] = library_check(task, model, tokenizer, result.adapter_dir, settings.check_items,
                                               device)
        store.write_json_atomic(work / ENTRY, {"key": key, "task": task.name, "settings": asdict(settings),
                                               "data": task.pool_info.fingerprints, "checkpoints": rel,
                                               "adapter": "adapter", "losses": result.losses,
                                               "cost": meter.cost.to_dict(), "checks": checks})

    # Built under a lock (harness/artifacts.py): targets and controls that train on the same task at once wait for
    # one build; a failed build (a full disk, a refused budget) leaves no half-written entry.
    return artifacts.get_or_build(_folder(root, task, key), lambda folder: _read(folder, key), train,
                                  f"the library LoRA of {task.name}", say)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def trajectory_spread(checkpoints: list[Path]) -> dict:
    """How far a library trajectory moves, in weight updates dW = BA (diagnostics.delta_inner): the cosine between
    its first and last saved steps, and the mean cosine and relative distance of each step to their mean (a
    trajectory of identical steps gives 1, 1 and 0)."""
    from baselines.dnd.diagnostics import _factors, cosine, mean_state, rel_l2

    states = [_load(p) for p in checkpoints]
    factors = [_factors(s) for s in states]
    mean = _factors(mean_state(states))
    return {"steps": len(states), "first_last_cosine": cosine(factors[0], factors[-1]),
            "cosine_to_mean": sum(cosine(f, mean) for f in factors) / len(factors),
            "rel_l2_to_mean": sum(rel_l2(f, mean) for f in factors) / len(factors)}


def own_task_scores(task: TaskHandle, model, tokenizer, adaptation, items: int, device) -> tuple[str, dict]:
    """(metric, {doc_id: score}) of an adaptation on `items` of `task`'s eval items drawn with seed 0 (the same
    items for a library LoRA, base and every generated LoRA checked on that task; not necessarily the items a
    cell scores, which `eval.subset_seed` draws), scored by lm-eval as any cell is. The metric is `acc` where the
    task has it, else its first."""
    from harness.evaluate import evaluate_adaptation

    indices = task.eval_indices(min(items, len(task.eval_docs)), 0)
    result = evaluate_adaptation(model, tokenizer, task, adaptation, indices, 16, device, count_flops=False)
    names = [m for m in result.metrics if not m.endswith("_stderr")]
    metric = "acc" if "acc" in names else names[0]
    return metric, {s["doc_id"]: float(s[metric]) for s in result.samples}


def library_check(task: TaskHandle, model, tokenizer, adapter_dir, items: int, device) -> dict:
    """A library LoRA against base on `items` of its own task's eval items: accuracy ± stderr of each, and the
    paired test of the difference (harness.stats)."""
    import numpy as np

    from harness import stats
    from harness.strategy import Adaptation

    scores = {}
    for name, adaptation in (("base", Adaptation(kind="none")),
                             ("lora", Adaptation(kind="adapter", adapter_dir=str(adapter_dir)))):
        metric, scores[name] = own_task_scores(task, model, tokenizer, adaptation, items, device)
    ids = sorted(scores["base"])
    base = np.array([scores["base"][i] for i in ids])
    lora = np.array([scores["lora"][i] for i in ids])
    test = stats.paired_test(base, lora)
    se = lambda x: float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")  # noqa: E731
    return {"metric": metric, "n": len(ids), "base": float(base.mean()), "base_stderr": se(base),
            "lora": float(lora.mean()), "lora_stderr": se(lora), "delta": test["delta"], "p": test["p"],
            "test": test["test"], "beats_base": bool(test["delta"] > 0 and test["p"] < 0.05)}
