"""The DnD strategy, and what it shares with its controls (controls.py): the library, and charging
its one-off phases to the budget.

`dnd`: collect (cached) → meta_train (cached) → generate one adapter from N unlabeled prompts of the
target's adaptation pool (the cell's seed picks the prompt batch, so seeds are the M generated
adapters); its record carries the collapse diagnostic (diagnostics.py).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from baselines.dnd import report
from baselines.dnd.config import DnDSettings, MetaTrainSettings, get_preset, print_presets
from baselines.dnd.diagnostics import collapse
from baselines.dnd.encoder import load_encoder
from baselines.dnd.generator import (cached_cost, generate_tokens, generator_key, meta_train, predict_generate_flops,
                                     predict_meta_train_flops, write_adapter)
from baselines.dnd.library import (CollectSettings, cached_entry, collect_entry, entry_key, predict_collect_flops,
                                   recipes_digest, task_handle)
from baselines.dnd.tokenizer import LoraTokenizer, default_width, shapes_of_model
from harness.budget import BudgetUse, check_one_off_fits, one_off_share
from harness.console import say
from harness.costs import PhaseMeter
from harness.errors import HarnessError
from harness.pricing import lora_serving
from harness.settings import CONFIG_DIR
from harness.strategy import AdaptContext, Adaptation, Prerequisite, ReportPage, Strategy
from harness.strategy_settings import settings_from
from harness.tasks import dataset_identity


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


class _LibraryStrategy(Strategy):
    """Validation and library collection shared by DnD and its controls."""

    def validate(self, settings) -> None:
        self._settings(settings)  # keys, types, the preset, bank, library or universe, collect and meta_train

    def _settings(self, settings) -> DnDSettings:
        """The typed settings of dnd.yaml (the controls' node adds mode and member)."""
        return settings_from(DnDSettings, settings)

    def validate_cell(self, cfg) -> None:
        """Checks that need the target: leakage (by dataset, not by name), library size, known library tasks."""
        target = dataset_identity(cfg.task)
        for name in library_tasks(cfg.strategy, str(cfg.task.name)):
            path = CONFIG_DIR / "task" / f"{name}.yaml"
            if not path.is_file():
                raise HarnessError(f"DnD library task {name!r} has no config in configs/task/")
            if dataset_identity(OmegaConf.load(path)) == target:
                raise HarnessError(f"DnD library task {name} reads the target's dataset {'/'.join(map(str, target))} "
                                   f"(leakage): remove it from strategy.library")

    def fingerprint(self, settings) -> str:
        """The recipes (configs/dnd_recipe/) that fill dnd.yaml's null collect and meta_train keys are inputs
        outside the config: their digest keys the cell, so editing a recipe makes new cells."""
        return recipes_digest()

    def reads_tasks(self, cfg) -> list[str]:
        """The library tasks whose data the adaptation learns from (their fingerprints key the cell)."""
        return library_tasks(cfg.strategy, str(cfg.task.name))

    def one_off_phases(self, settings) -> tuple[str, ...]:
        return ("collect",)  # the library LoRAs, shared by every target whose library holds their task

    def _collect_for(self, settings, model_cfg: dict, model_name: str) -> CollectSettings:
        """The library's collect settings, from the config alone: DnD's preset (strategy.preset, else the model's
        dnd_preset) fills what the recipe leaves null."""
        name = settings.get("preset") or model_cfg.get("dnd_preset")
        if not name:
            raise HarnessError(f"DnD: model {model_name} names no dnd_preset: set strategy.preset "
                               f"(harness list dnd-presets)")
        return self._settings(settings).collect.for_preset(get_preset(str(name)))

    def prerequisites(self, cfg) -> list[Prerequisite]:
        """One library LoRA per library task, keyed by what it is trained from (the model, the collect settings),
        so that every strategy of the sweep that reads the same library shares one job for each."""
        model = OmegaConf.to_container(cfg.model, resolve=True)
        collect = self._collect_for(cfg.strategy, model, str(cfg.model.name))
        base = _digest([model, asdict(collect)])
        return [Prerequisite("library", f"dnd-library/{base}/{task}", task)
                for task in library_tasks(cfg.strategy, str(cfg.task.name))]

    def prepare(self, ctx: AdaptContext, need: Prerequisite) -> None:
        """The library phase: one library LoRA, once this target's share of the library fits the budget."""
        if need.phase != "library":
            raise HarnessError(f"{ctx.settings.name}: no prerequisite phase {need.phase!r} (library)")
        collect = self._collect_for(ctx.settings, ctx.model_cfg, ctx.model_name)
        names = library_tasks(ctx.settings, ctx.task.name)
        tasks = {name: task_handle(name) for name in names}
        per_query, _ = self._serving(ctx, collect)
        self._check_plan(ctx, self._planned_library(ctx, collect, names, tasks), 0.0, per_query,
                         f"the library of {len(names)} LoRAs")
        self._library(ctx, collect, [str(need.item)], tasks)

    def report_pages(self) -> list[ReportPage]:
        return [ReportPage("dnd_loo.md", "DnD leave-one-out", report.LOO_INTRO, report.loo_table),
                ReportPage("dnd_library.md", "DnD library", report.LIBRARY_INTRO, report.library_table),
                ReportPage("dnd_speedup.md", "DnD speedup", report.SPEEDUP_INTRO, report.speedup_table)]

    def list_pages(self) -> dict:
        return {"dnd-presets": print_presets}

    def _meta(self, settings, preset) -> MetaTrainSettings:
        return self._settings(settings).meta_train.for_preset(preset)

    def _setup(self, ctx: AdaptContext):
        s = ctx.settings
        name = s.get("preset") or ctx.model_cfg.get("dnd_preset")
        if not name:
            raise HarnessError(f"DnD: model {ctx.model_name} names no dnd_preset: set strategy.preset "
                               f"(harness list dnd-presets)")
        preset = get_preset(str(name))
        collect = self._settings(s).collect.for_preset(preset)
        shapes = shapes_of_model(ctx.model, collect.rank, preset.targets)
        try:
            tok = LoraTokenizer(shapes, collect.rank, preset.width)
        except HarnessError:  # the preset's width does not divide this model's sides: name the layout it needs
            tok = LoraTokenizer(shapes, collect.rank, default_width(shapes))
        # before any compute is spent; a mismatch names the presets that fit this model
        preset.check_fits(tok.n_tokens, tok.rank, tok.width, ctx.model_name, model=ctx.model)
        names = library_tasks(s, ctx.task.name)
        return preset, collect, tok, names

    def _library(self, ctx: AdaptContext, collect: CollectSettings, names: list[str], tasks: dict):
        entries, costs = [], []
        for name in names:
            entry, reused = collect_entry(tasks[name], ctx.model, ctx.tokenizer, ctx.model_cfg, collect,
                                          ctx.shared_dir, ctx.device, ctx.progress, say=say)
            cost = entry.cost
            cost.shared_by = shared_by(ctx.settings, ctx.task.name, names, name)
            cost.artifact = f"dnd-library/{name}/{entry.key[:16]}"
            cost.details = {**cost.details, "reused": reused}
            entries.append(entry)
            costs.append(cost)
        return entries, costs

    def _planned_library(self, ctx: AdaptContext, collect: CollectSettings, names: list[str], tasks: dict) -> list:
        """Each library LoRA's one-off cost before any compute: as recorded when it is cached, else predicted
        (analytic FLOPs of the very batches its training will draw; its seconds are not known yet)."""
        plan = []
        for name in names:
            cached = cached_entry(tasks[name], ctx.model_cfg, collect, ctx.shared_dir)
            flops = cached.cost.flops_measured if cached else predict_collect_flops(tasks[name], ctx.model,
                                                                                     ctx.tokenizer, collect)
            plan.append({"flops_measured": flops, "wall_s": cached.cost.wall_s if cached else 0.0,
                         "shared_by": shared_by(ctx.settings, ctx.task.name, names, name)})
        return plan

    def _check_plan(self, ctx: AdaptContext, plan: list[dict], own: float, serving: float, what: str) -> None:
        """Before any compute: the one-off share by the budget's policy, plus this target's own cost (generation
        and serving the adapter over the horizon), must fit the budget."""
        b = ctx.budget
        share = one_off_share(plan, b.kind, b.one_off)
        rest = (own + b.horizon * serving) if b.kind == "flops" else 0.0
        check_one_off_fits(b, share, rest, what,
                           "declare more targets sharing them (strategy.targets) or set budget.one_off=excluded")

    def _charge(self, ctx: AdaptContext, cost, one_off: list, per_query: float, what: str) -> BudgetUse:
        """This target's budget use: its own phase, serving the adapter over the horizon, and its one-off share."""
        b = ctx.budget
        own = {"flops": cost.flops_measured, "seconds": cost.wall_s}.get(b.kind, 0.0)
        queries = b.horizon * per_query if b.kind == "flops" else 0.0
        share = one_off_share(one_off, b.kind, b.one_off)
        declared = sorted({c.shared_by for c in one_off})
        reason = f"{what}; one-off phases charged {b.one_off}" + (
            f" (shared by {'/'.join(map(str, declared))} declared targets; the report recounts the targets that "
            f"used them)" if b.one_off == "amortized" and one_off else "")
        use = BudgetUse.of(b, own=own, queries=queries, one_off=share, reason=reason)
        if use.spent > b.amount:  # measured costs exceeded the prediction that let the cell start
            use.bound = True
            use.stop_reason += f"; overspent by {use.spent - b.amount:.3g} {b.kind}"
        return use

    def _serving(self, ctx: AdaptContext, collect: CollectSettings) -> tuple[float, int]:
        """(extra FLOPs per query, adapter weights) of serving the library's LoRA layout unmerged."""
        return lora_serving(ctx.pricing, ctx.model, collect.lora())


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _target_prompts(ctx: AdaptContext, n: int) -> tuple[list[str], list[int]]:
    """N unlabeled prompts from the target's adaptation pool (never an evaluated item), chosen by the seed."""
    pool = ctx.task.pool_docs
    if len(pool) < n:
        raise HarnessError(f"task {ctx.task.name}: its adaptation pool has {len(pool)} prompts, the generator "
                           f"preset needs {n}")
    rows = sorted(torch.randperm(len(pool), generator=torch.Generator().manual_seed(ctx.seed))[:n].tolist())
    return [ctx.task.prompt_with_options(pool[i]) for i in rows], rows


def _seen_task_scorer(ctx: AdaptContext, tasks: dict, template: Path, items: int):
    """score(task, state) for the seen-task check: a generated LoRA on `items` of the library task's own eval items
    (the ones its library LoRA was checked on); None when the library is not checked (collect.check_items=0)."""
    if not items:
        return None
    import tempfile

    from baselines.dnd.library import own_task_scores

    def score(task: str, state: dict) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            adapter = write_adapter(state, template, Path(tmp) / "adapter")
            _, values = own_task_scores(tasks[task], ctx.model, ctx.tokenizer,
                                        Adaptation(kind="adapter", adapter_dir=str(adapter)), items, ctx.device)
        return values

    return score


def _summary(diagnostic: dict | None) -> dict | None:
    """The generator's seen-task reconstruction, without the per-task rows (those stay in generator.json)."""
    if not diagnostic:
        return None
    return {k: diagnostic.get(k) for k in ("label", "seen_cosine", "held_back_cosine", "cosine_to_library_mean",
                                           "distinct", "thresholds", "library_pairwise_cosine", "accuracy",
                                           "gain_recovered", "gain_recovered_over")}


class DragAndDrop(_LibraryStrategy):
    def adapts_images(self, settings) -> bool:
        return True  # conditions are the prompts' text; the library LoRAs adapt the language model

    def one_off_phases(self, settings) -> tuple[str, ...]:
        return ("collect", "meta_train")  # the library and the generator trained on it

    def prerequisites(self, cfg) -> list[Prerequisite]:
        """The library LoRAs, then this target's generator (the same for every seed: seeds are prompt batches)."""
        library = super().prerequisites(cfg)
        if not library:
            return []
        model = OmegaConf.to_container(cfg.model, resolve=True)
        settings = OmegaConf.to_container(cfg.strategy, resolve=True)
        key = _digest([model, settings, [need.key for need in library]])
        return [*library, Prerequisite("generator", f"dnd-generator/{key}")]

    def prepare(self, ctx: AdaptContext, need: Prerequisite) -> None:
        plan = self._planned(ctx)
        if need.phase == "library":
            self._library(ctx, plan.collect, [str(need.item)], plan.tasks)
        elif need.phase == "generator":
            self._generator(ctx, plan)
        else:
            raise HarnessError(f"dnd: no prerequisite phase {need.phase!r} (library, generator)")

    def _planned(self, ctx: AdaptContext) -> SimpleNamespace:
        """What adapt knows before any compute, once it has checked that this target's share of the library and
        the generator fits the budget."""
        s = ctx.settings
        preset, collect, tok, names = self._setup(ctx)
        encoder = load_encoder(str(s.encoder), "cpu" if ctx.device.type != "cuda" else str(ctx.device))
        tasks = {name: task_handle(name) for name in names}
        meta = self._meta(s, preset)
        per_query, n_lora = self._serving(ctx, collect)
        plan = self._planned_library(ctx, collect, names, tasks)
        keys = [entry_key(ctx.model_cfg, tasks[n], collect) for n in names]
        gkey = generator_key(preset, encoder.name, meta, int(s.bank), keys)
        cached = cached_cost(ctx.shared_dir, names, gkey)
        banks = [min(int(s.bank), len(tasks[n].pool_docs)) for n in names]
        plan.append({"flops_measured": cached.flops_measured if cached else
                     predict_meta_train_flops(preset, encoder, banks, meta),
                     "wall_s": cached.wall_s if cached else 0.0, "shared_by": shared_by(s, ctx.task.name, names)})
        self._check_plan(ctx, plan, predict_generate_flops(preset, encoder), per_query,
                         f"DnD's one-off phases ({len(names)} library LoRAs and the generator's training)")
        return SimpleNamespace(preset=preset, collect=collect, tok=tok, names=names, encoder=encoder, tasks=tasks,
                               meta=meta, per_query=per_query, n_lora=n_lora)

    def _generator(self, ctx: AdaptContext, plan: SimpleNamespace):
        """(library entries, their costs, the trained generator, its cost): the library, then the generator."""
        entries, costs = self._library(ctx, plan.collect, plan.names, plan.tasks)
        trained, reused = meta_train(plan.preset, plan.encoder, entries, plan.tasks, plan.tok, plan.meta,
                                     int(ctx.settings.bank), ctx.shared_dir, ctx.device, ctx.progress, say=say,
                                     score=_seen_task_scorer(ctx, plan.tasks, entries[0].adapter,
                                                             plan.collect.check_items))
        train_cost = trained.cost
        train_cost.shared_by = shared_by(ctx.settings, ctx.task.name, plan.names)
        train_cost.artifact = f"dnd-generator/{trained.key[:16]}"
        train_cost.details = {**train_cost.details, "reused": reused}
        return entries, costs, trained, train_cost

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        plan = self._planned(ctx)
        preset, tok, names, encoder, per_query, n_lora = (plan.preset, plan.tok, plan.names, plan.encoder,
                                                          plan.per_query, plan.n_lora)
        entries, costs, trained, train_cost = self._generator(ctx, plan)
        prompts, rows = _target_prompts(ctx, preset.n_prompts)
        with PhaseMeter("generate", ctx.device) as meter:
            tokens = generate_tokens(trained, encoder, prompts, meter, ctx.device)
            state = tok.detokenize(tokens)
            adapter = write_adapter(state, entries[0].adapter, Path(ctx.workdir) / "adapter")
        if not torch.isfinite(tokens).all():
            raise HarnessError("the generator produced non-finite weights: check strategy.meta_train.lr")
        use = self._charge(ctx, meter.cost, costs + [train_cost], per_query, "one generator forward pass")
        return Adaptation(
            kind="adapter", adapter_dir=str(adapter), labels_used=0, costs=costs + [train_cost, meter.cost],
            budget=use, per_query_extra_flops=per_query, lora_params=n_lora,
            details={"preset": preset.name, "encoder": encoder.name, "library": names,
                     "generator": str(trained.folder), "generator_key": trained.key,
                     "condition_rows": rows, "n_prompts": len(prompts), "tokens": tok.describe(),
                     "meta_train_loss": {"first": train_cost.details.get("first_loss"),
                                         "final": train_cost.details.get("final_loss")},
                     "collapse": collapse(state, entries),
                     # each library LoRA on its own task vs base, and how far its trajectory moves
                     "library_checks": {e.task: {"entry": e.key[:16], **e.checks} for e in entries},
                     # does the generator reproduce the tasks it trained on? (diagnostics.reconstruction)
                     "reconstruction": _summary(trained.info.get("reconstruction"))})

