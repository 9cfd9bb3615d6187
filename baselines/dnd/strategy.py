"""The DnD strategy and its controls, registered with the harness.

`dnd`: collect (cached) → meta_train (cached) → generate one adapter from N unlabeled prompts of the
target's adaptation pool (the cell's seed picks the prompt batch, so seeds are the M generated
adapters). Controls on the same library: `dnd_member` (one library task's LoRA on the target),
`dnd_mean` (the parameter mean of every library checkpoint: what a collapsed generator emits) and
`dnd_nearest` (the library LoRA whose prompts embed closest to the target's).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from baselines.dnd.config import MetaTrainSettings, get_preset
from baselines.dnd.encoder import load_encoder
from baselines.dnd.generator import generate_tokens, meta_train, prompt_bank, write_adapter
from baselines.dnd.library import CollectSettings, LibraryEntry, collect_entry, task_handle
from baselines.dnd.tokenizer import LoraTokenizer, default_width, shapes_of_model
from baselines.lora import lora_param_count
from harness.budget import BudgetUse
from harness.config_checks import as_float, as_int
from harness.costs import PhaseMeter
from harness.errors import HarnessError
from harness.settings import CONFIG_DIR
from harness.strategy import AdaptContext, Adaptation, register_strategy
from harness.trainer import LoraSettings


def _say(message: str) -> None:
    from harness.runner import say

    say(message)


def library_tasks(settings, target: str) -> list[str]:
    """The tasks the generator learns from: `library`, or the universe minus the target (leave-one-out)."""
    universe = list(settings.get("universe") or [])
    library = settings.get("library")
    tasks = list(library) if library is not None else [t for t in universe if t != target]
    if target in tasks:
        raise HarnessError(f"DnD target task {target} is also in the generator's library {tasks} (leakage): "
                           f"remove it from strategy.library")
    if len(set(tasks)) < 2:
        raise HarnessError(f"DnD needs a library of at least two tasks other than the target (got {tasks}): "
                           f"set strategy.library or strategy.universe")
    return sorted(set(tasks))


def shared_by(settings, target: str, tasks: list[str], task: str | None = None) -> int:
    """How many targets share a one-off cost: the library LoRA of `task`, or (task=None) the generator.

    Targets are `strategy.targets`; unset, the universe for leave-one-out, else this target alone
    (an explicit library shared by no declared target is charged whole).
    """
    targets = settings.get("targets")
    if not targets:
        targets = settings.get("universe") if settings.get("library") is None else [target]
    n = 0
    for t in targets:
        try:
            lib = library_tasks(settings, t)
        except HarnessError:
            continue
        n += (task in lib) if task is not None else (lib == tasks)
    return max(1, n)


class _LibraryStrategy:
    """Validation and library collection shared by DnD and its controls."""

    def validate(self, settings) -> None:
        if settings.get("preset") is not None:
            get_preset(str(settings.preset))
        CollectSettings.from_cfg(settings.collect)
        self._meta(settings)
        as_int(settings.get("bank"), "strategy.bank", minimum=1)
        if settings.get("library") is None and not settings.get("universe"):
            raise HarnessError("DnD: set strategy.library (tasks to learn from) or strategy.universe (leave-one-out)")

    def validate_cell(self, cfg) -> None:
        """Checks that need the target: leakage, library size, known library tasks."""
        for name in library_tasks(cfg.strategy, str(cfg.task.name)):
            if not (CONFIG_DIR / "task" / f"{name}.yaml").is_file():
                raise HarnessError(f"DnD library task {name!r} has no config in configs/task/")

    @staticmethod
    def _meta(settings) -> MetaTrainSettings:
        values = {k: v for k, v in OmegaConf.to_container(settings.meta_train).items()
                  if k in MetaTrainSettings.__dataclass_fields__}
        meta = MetaTrainSettings(**values)
        as_int(meta.steps, "strategy.meta_train.steps", minimum=1)
        as_int(meta.batch_size, "strategy.meta_train.batch_size", minimum=1)
        as_float(meta.lr, "strategy.meta_train.lr", positive=True)
        return meta

    def _setup(self, ctx: AdaptContext):
        s = ctx.settings
        name = s.get("preset") or ctx.model_cfg.get("dnd_preset")
        if not name:
            raise HarnessError(f"DnD: model {ctx.model_name} names no dnd_preset: set strategy.preset "
                               f"(harness list dnd-presets)")
        preset = get_preset(str(name))
        collect = CollectSettings.from_cfg(s.collect)
        shapes = shapes_of_model(ctx.model, collect.rank)
        try:
            tok = LoraTokenizer(shapes, collect.rank, preset.width)
        except HarnessError:  # the preset's width does not divide this model's sides: name the layout it needs
            tok = LoraTokenizer(shapes, collect.rank, default_width(shapes))
        preset.check_fits(tok.n_tokens, tok.rank, tok.width, ctx.model_name)  # before any compute is spent
        names = library_tasks(s, ctx.task.name)
        return preset, collect, tok, names

    def _library(self, ctx: AdaptContext, collect: CollectSettings, names: list[str]):
        tasks, entries, costs = {}, [], []
        for name in names:
            tasks[name] = task_handle(name)
            entry, reused = collect_entry(tasks[name], ctx.model, ctx.tokenizer, ctx.model_cfg, collect,
                                          ctx.shared_dir, ctx.device, ctx.progress, say=_say)
            cost = entry.cost
            cost.shared_by = shared_by(ctx.settings, ctx.task.name, names, name)
            cost.details = {**cost.details, "reused": reused}
            entries.append(entry)
            costs.append(cost)
        return tasks, entries, costs

    def _serving(self, ctx: AdaptContext, rank: int) -> float:
        forwards, tokens = ctx.task.query_profile(ctx.tokenizer)
        return 2 * lora_param_count(ctx.model, LoraSettings(rank=rank)) * forwards * tokens

    def _budget(self, ctx: AdaptContext, cost, per_query: float, what: str) -> BudgetUse:
        """This target's budget use: its own (generate) phase plus serving the adapter over the horizon."""
        b = ctx.budget
        spent = {"flops": cost.flops_measured + b.horizon * per_query, "seconds": cost.wall_s}.get(b.kind, 0.0)
        if spent > b.amount:
            raise HarnessError(f"budget {b.name}: {what} alone costs {spent:.3g} {b.kind}: raise budget.amount")
        return BudgetUse(b.name, b.kind, b.amount, b.horizon, spent, False,
                         f"{what}; the one-off collect and meta_train costs are recorded apart (marginal and "
                         f"amortized), not charged to this target's budget")


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].flatten().float() for k in sorted(state)])


def _mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}


def _collapse(generated: dict, entries: list[LibraryEntry]) -> dict:
    """How far the generated LoRA lies from the library mean, relative to how far the library LoRAs do."""
    mean = _flat(_mean_state([e.state(p) for e in entries for p in e.checkpoints]))
    finals = {e.task: _flat(e.state()) for e in entries}
    gen = _flat(generated)
    norm = float(mean.norm()) or 1.0
    dists = {t: float((gen - f).norm() / f.norm()) for t, f in finals.items()}
    return {"rel_dist_to_library_mean": float((gen - mean).norm()) / norm,
            "library_spread": sum(float((f - mean).norm()) / norm for f in finals.values()) / len(finals),
            "rel_dist_to_nearest_library_lora": min(dists.values()),
            "nearest_library_lora": min(dists, key=dists.get),
            "cosine_to_library_mean": float(torch.nn.functional.cosine_similarity(gen, mean, dim=0)),
            "l2_norm": float(gen.norm()), "library_mean_l2_norm": norm,
            "library_l2_norms": {t: float(f.norm()) for t, f in finals.items()}}


def _target_prompts(ctx: AdaptContext, n: int) -> tuple[list[str], list[int]]:
    """N unlabeled prompts from the target's adaptation pool (never an evaluated item), chosen by the seed."""
    pool = ctx.task.pool_docs
    if len(pool) < n:
        raise HarnessError(f"task {ctx.task.name}: its adaptation pool has {len(pool)} prompts, the generator "
                           f"preset needs {n}")
    rows = sorted(torch.randperm(len(pool), generator=torch.Generator().manual_seed(ctx.seed))[:n].tolist())
    return [ctx.task.unlabeled_prompt(pool[i]) for i in rows], rows


@register_strategy("dnd")
class DragAndDrop(_LibraryStrategy):
    def adapt(self, ctx: AdaptContext) -> Adaptation:
        s = ctx.settings
        preset, collect, tok, names = self._setup(ctx)
        encoder = load_encoder(str(s.encoder), "cpu" if ctx.device.type != "cuda" else str(ctx.device))
        tasks, entries, costs = self._library(ctx, collect, names)
        trained, reused = meta_train(preset, encoder, entries, tasks, tok, self._meta(s), int(s.bank),
                                     ctx.shared_dir, ctx.device, ctx.progress, say=_say)
        train_cost = trained.cost
        train_cost.shared_by = shared_by(s, ctx.task.name, names)
        train_cost.details = {**train_cost.details, "reused": reused}
        prompts, rows = _target_prompts(ctx, preset.n_prompts)
        with PhaseMeter("generate", ctx.device) as meter:
            tokens = generate_tokens(trained, encoder, prompts, meter, ctx.device)
            state = tok.detokenize(tokens)
            adapter = write_adapter(state, entries[0].adapter, Path(ctx.workdir) / "adapter")
        if not torch.isfinite(tokens).all():
            raise HarnessError("the generator produced non-finite weights: check strategy.meta_train.lr")
        per_query = self._serving(ctx, collect.rank)
        use = self._budget(ctx, meter.cost, per_query, "one generator forward pass")
        return Adaptation(
            kind="adapter", adapter_dir=str(adapter), labels_used=0, costs=costs + [train_cost, meter.cost],
            budget=use, per_query_extra_flops=per_query,
            details={"preset": preset.name, "encoder": encoder.name, "library": names,
                     "generator": str(trained.folder), "generator_key": trained.key,
                     "condition_rows": rows, "n_prompts": len(prompts), "tokens": tok.describe(),
                     "meta_train_loss": {"first": train_cost.details.get("first_loss"),
                                         "final": train_cost.details.get("final_loss")},
                     "collapse": _collapse(state, entries)})


@register_strategy("dnd_control")
class LibraryControl(_LibraryStrategy):
    """A control on DnD's library: `mode` member (one library LoRA), mean, or nearest."""

    def validate(self, settings) -> None:
        super().validate(settings)
        if settings.get("mode") not in ("member", "mean", "nearest"):
            raise HarnessError(f"strategy.mode must be member, mean or nearest (got {settings.get('mode')!r})")
        as_int(settings.get("member"), "strategy.member", minimum=0, allow_none=True)

    def uses_seed(self, settings) -> bool:
        """Only `member` with member=null reads the seed (seed k → library task k); mean and nearest do not."""
        return settings.get("mode") == "member" and settings.get("member") is None

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        s = ctx.settings
        preset, collect, tok, names = self._setup(ctx)
        tasks, entries, costs = self._library(ctx, collect, names)
        mode = str(s.mode)
        details = {"mode": mode, "library": names}
        with PhaseMeter("generate", ctx.device) as meter:
            if mode == "member":
                k = int(s.member) if s.get("member") is not None else ctx.seed
                if k >= len(entries):
                    raise HarnessError(f"strategy.member={k}, but the library of {ctx.task.name} has "
                                       f"{len(entries)} tasks (0..{len(entries) - 1})")
                adapter, details["member_task"] = entries[k].adapter, entries[k].task
            elif mode == "mean":
                state = _mean_state([e.state(p) for e in entries for p in e.checkpoints])
                adapter = write_adapter(state, entries[0].adapter, Path(ctx.workdir) / "adapter")
                details["checkpoints_averaged"] = sum(len(e.checkpoints) for e in entries)
            else:
                # The target's prompts: a bank drawn like the library's (fixed seed, so the control does
                # not vary with the cell's seed), all from the adaptation pool.
                encoder = load_encoder(str(s.encoder), "cpu" if ctx.device.type != "cuda" else str(ctx.device))
                prompts = prompt_bank(ctx.task, int(s.bank), self._meta(s).seed)
                target = self._centroid(encoder, prompts, meter)
                scores = {}
                for e in entries:
                    bank = prompt_bank(tasks[e.task], int(s.bank), self._meta(s).seed)
                    scores[e.task] = float(torch.nn.functional.cosine_similarity(
                        target, self._centroid(encoder, bank, meter), dim=0))
                best = max(scores, key=scores.get)
                adapter = next(e.adapter for e in entries if e.task == best)
                details.update(nearest_task=best, cosine=scores, target_prompts=len(prompts))
        per_query = self._serving(ctx, collect.rank)
        use = self._budget(ctx, meter.cost, per_query, f"library control ({mode})")
        return Adaptation(kind="adapter", adapter_dir=str(adapter), labels_used=0, costs=costs + [meter.cost],
                          budget=use, per_query_extra_flops=per_query, details=details)

    @staticmethod
    def _centroid(encoder, prompts: list[str], meter: PhaseMeter) -> torch.Tensor:
        """The mean of the prompts' sentence embeddings: one vector per prompt set."""
        with meter.count():  # lengths vary from set to set: always counted live
            vectors, lengths = encoder.embed(prompts)
        meter.add(flops_analytic=sum(encoder.flops(1, n) for n in lengths), tokens=sum(lengths))
        return vectors.mean(0)
