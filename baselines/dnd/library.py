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
from dataclasses import asdict, dataclass
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
from harness.trainer import DEFAULT_TARGETS, LoraSettings, predict_train_flops, train_lora

ENTRY = "entry.json"


@dataclass(frozen=True)
class CollectSettings:
    """dnd.yaml's `collect`: how each library LoRA is trained (values in the YAML only; they key the entry)."""

    steps: int
    checkpoints: int  # the last this-many optimizer steps are all saved
    batch_size: int
    lr: float
    rank: int | None  # None: the generator preset's rank (the rank of the LoRAs it emits): see `for_preset`
    alpha: float | None  # None: 2 x rank, as the paper (r8 / alpha 16, r16 / alpha 32)
    max_length: int
    seed: int

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "max_length"):
            as_int(getattr(self, key), f"strategy.collect.{key}", minimum=1)
        as_int(self.rank, "strategy.collect.rank", minimum=1, allow_none=True)
        as_float(self.lr, "strategy.collect.lr", positive=True)
        if self.checkpoints < 1 or self.checkpoints > self.steps:
            raise HarnessError(f"strategy.collect.checkpoints must be in 1..collect.steps "
                               f"(got {self.checkpoints} of {self.steps})")

    @classmethod
    def from_cfg(cls, cfg) -> "CollectSettings":
        """Kept for callers not yet on `DnDSettings` (settings_from(DnDSettings, node).collect); same checks."""
        return settings_from(cls, cfg, "strategy.collect")

    def for_preset(self, preset) -> "CollectSettings":
        """These settings with rank and alpha resolved for a generator preset: the library LoRAs must have the
        rank the preset emits, so `rank: null` takes it, and an explicit rank that differs is refused."""
        from dataclasses import replace

        if self.rank is not None and self.rank != preset.rank:
            raise HarnessError(f"strategy.collect.rank={self.rank}, but generator preset {preset.name} emits rank "
                               f"{preset.rank} LoRAs: set strategy.collect.rank=null (the preset's rank)")
        rank = preset.rank
        return replace(self, rank=rank, alpha=2 * rank if self.alpha is None else self.alpha)

    def task_seed(self, task: str) -> int:
        """The trainer's seed for `task`'s library LoRA: `seed` offset by a stable hash of the task's name, so each
        library task starts from its own LoRA A (and batch order), not one shared by every task."""
        return self.seed + int(hashlib.sha256(task.encode()).hexdigest()[:8], 16) % 1_000_003

    def lora(self) -> LoraSettings:
        """The trainer's settings: `collect`'s, and the paper's recipe for the rest (every attention and MLP
        projection, no dropout or weight decay, lora.yaml's 3 % warm-up), fixed so that `collect` keys the entry.
        The rate stays constant after the warm-up, as in the paper's resumed runs: a cosine that ends at 0 made
        the saved last steps nearly identical (issue 14)."""
        if self.rank is None or self.alpha is None:
            raise HarnessError("strategy.collect: rank and alpha are resolved from the generator preset first "
                               "(CollectSettings.for_preset)")
        return LoraSettings(rank=self.rank, alpha=self.alpha, dropout=0.0, target_modules=DEFAULT_TARGETS, lr=self.lr,
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
    model_cfg = {k: v for k, v in model_cfg.items() if k != "dnd_preset"}  # which generator reads it is not the LoRA's identity
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
                         folder / data["adapter"], PhaseCost.from_dict(data["cost"]))
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
                                seed=settings.task_seed(task.name), progress=progress)
        meter.cost.details.update({"task": task.name, "steps": result.steps, "seed": settings.task_seed(task.name),
                                   "sequences_processed": result.sequences_processed,
                                   "first_loss": result.losses[0], "final_loss": result.losses[-1],
                                   "checkpoints": len(result.trajectory), "entry_key": key})
        rel = [str(Path(p).relative_to(work)) for p in result.trajectory]
        store.write_json_atomic(work / ENTRY, {"key": key, "task": task.name, "settings": asdict(settings),
                                               "data": task.pool_info.fingerprints, "checkpoints": rel,
                                               "adapter": "adapter", "losses": result.losses,
                                               "cost": meter.cost.to_dict()})

    # Built under a lock (harness/artifacts.py): targets and controls that train on the same task at once wait for
    # one build; a failed build (a full disk, a refused budget) leaves no half-written entry.
    return artifacts.get_or_build(_folder(root, task, key), lambda folder: _read(folder, key), train,
                                  f"the library LoRA of {task.name}", say)
