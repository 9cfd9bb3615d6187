"""The T2L strategy: a description of the target task → a LoRA, from a hypernetwork trained on DnD's library.

`t2l`: collect the library (DnD's, cached and shared: both methods learn from the same LoRAs) → meta_train the
hypernetwork (cached, shared by every target with that library) → embed one description of the target and run
the hypernetwork once. The cell's seed picks the description: seeds 0..2 are the paper's three evaluation
descriptions (`descriptions: aligned`), or its controls (`unaligned`: another task's, `random`: random letters);
`description: '...'` is the user's own. The record carries the seen-task reconstruction check of the hypernetwork.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from baselines.dnd.generator import write_adapter
from baselines.dnd.library import CollectSettings, entry_key, recipes_digest, task_handle
from baselines.dnd.strategy import _digest, _LibraryStrategy, _seen_task_scorer, library_tasks, shared_by
from baselines.t2l import descriptions as desc
from baselines.t2l import report
from baselines.t2l.config import T2LSettings, get_preset, presets_fitting, print_presets, shape_of_model
from baselines.t2l.hypernet import (SftData, build_net, cached_cost, hypernet_key, join_state, meta_train,
                                    predict_meta_train_flops)
from harness.console import say
from harness.costs import PhaseMeter
from harness.errors import HarnessError
from harness.flops import ModelShape
from harness.strategy import AdaptContext, Adaptation, Prerequisite, ReportPage
from harness.strategy_settings import settings_from


class TextToLoRA(_LibraryStrategy):
    def _settings(self, settings) -> T2LSettings:
        return settings_from(T2LSettings, settings)

    def _collect_for(self, settings, model_cfg: dict, model_name: str) -> CollectSettings:
        return self._settings(settings).resolved_collect(model_cfg, model_name)

    def prerequisites(self, cfg) -> list[Prerequisite]:
        """The library LoRAs, then the hypernetwork trained on them (one for every seed and description)."""
        library = super().prerequisites(cfg)
        settings = OmegaConf.to_container(cfg.strategy, resolve=True)
        for key in ("description", "descriptions"):  # what the target is told: not the hypernetwork's input
            settings.pop(key, None)
        key = _digest([OmegaConf.to_container(cfg.model, resolve=True), settings, [n.key for n in library]])
        return [*library, Prerequisite("generator", f"t2l-hypernet/{key}")]

    def prepare(self, ctx: AdaptContext, need: Prerequisite) -> None:
        plan = self._planned(ctx)
        if need.phase == "library":
            self._library(ctx, plan.collect, [str(need.item)], plan.tasks)
        elif need.phase == "generator":
            self._trained(ctx, plan)
        else:
            raise HarnessError(f"t2l: no prerequisite phase {need.phase!r} (library, generator)")

    def uses_seed(self, settings) -> bool:
        """The seed picks the description (or the control's); a user's own description is one cell."""
        return settings.get("description") is None

    def fingerprint(self, settings) -> str:
        """DnD's recipes (the library's settings) and the description files key the cell."""
        return hashlib.sha256((recipes_digest() + desc.digest()).encode()).hexdigest()

    def validate_cell(self, cfg) -> None:
        super().validate_cell(cfg)  # leakage: the target's dataset is not in the library
        s = cfg.strategy
        for name in library_tasks(s, str(cfg.task.name)):
            desc.load(name)  # every library task has train descriptions, disjoint from its eval ones
        if s.get("description") is None and s.get("descriptions") == "aligned":
            desc.load(str(cfg.task.name))

    def one_off_phases(self, settings) -> tuple[str, ...]:
        return ("collect", "meta_train")

    def report_pages(self) -> list[ReportPage]:
        return [ReportPage("t2l_loo.md", "Text-to-LoRA held-out", report.INTRO, report.t2l_table)]

    def list_pages(self) -> dict:
        return {"t2l-presets": print_presets}

    def _setup(self, ctx: AdaptContext):
        s = self._settings(ctx.settings)
        collect = s.resolved_collect(ctx.model_cfg, ctx.model_name)
        hname = s.hypernet.preset or ctx.model_cfg.get("t2l_preset")
        if not hname:
            raise HarnessError(f"T2L: model {ctx.model_name} names no t2l_preset: set strategy.hypernet.preset "
                               "(harness list t2l-presets)")
        preset = get_preset(str(hname))
        shape = shape_of_model(ctx.model, collect.rank, collect.targets)
        preset.check_fits(shape, ctx.model_name, presets_fitting(shape))
        return s, collect, preset, library_tasks(ctx.settings, ctx.task.name)

    def _planned(self, ctx: AdaptContext) -> SimpleNamespace:
        """What adapt knows before any compute, once this target's share of the library and the hypernetwork fits
        the budget."""
        s, collect, preset, names = self._setup(ctx)
        hyper = s.hypernet
        encoder = desc.DescriptionEncoder(s.encoder, ctx.device, ctx.model, ctx.tokenizer)
        tasks = {name: task_handle(name) for name in names}
        per_query, n_lora = self._serving(ctx, collect)

        plan = self._planned_library(ctx, collect, names, tasks)
        key = hypernet_key(preset, hyper, encoder.name, [entry_key(ctx.model_cfg, tasks[n], collect) for n in names],
                           encoder.dim)
        cached = cached_cost(ctx.shared_dir, names, key)
        sft_step = ModelShape.of(ctx.model).lora_train_step(1, collect.max_length) if hyper.mode == "sft" else 0.0
        plan.append({"flops_measured": cached.flops_measured if cached else
                     predict_meta_train_flops(preset, hyper, encoder.dim, sft_step),
                     "wall_s": cached.wall_s if cached else 0.0, "shared_by": shared_by(ctx.settings, ctx.task.name,
                                                                                       names)})
        with torch.device("meta"):
            generate_flops = build_net(preset, hyper, encoder.dim).flops()
        self._check_plan(ctx, plan, generate_flops, per_query,
                         f"T2L's one-off phases ({len(names)} library LoRAs and the hypernetwork's training)")
        return SimpleNamespace(s=s, collect=collect, preset=preset, names=names, hyper=hyper, encoder=encoder,
                               tasks=tasks, per_query=per_query, n_lora=n_lora)

    def _trained(self, ctx: AdaptContext, plan: SimpleNamespace):
        """(library entries, their costs, the trained hypernetwork, its cost, the LoRA's weight names)."""
        names, tasks, collect, hyper, encoder = plan.names, plan.tasks, plan.collect, plan.hyper, plan.encoder
        entries, costs = self._library(ctx, collect, names, tasks)
        keys = sorted(entries[0].state())
        sft = None
        if hyper.mode == "sft":
            sft = SftData(ctx.model, ctx.tokenizer, {n: [tasks[n].training_example(d)
                                                         for d in tasks[n].sample_pool(None, hyper.seed)]
                                                     for n in names}, collect.lora())
        score = _seen_task_scorer(ctx, tasks, entries[0].adapter, collect.check_items)

        def diagnose(trained) -> dict:
            return _reconstruction(trained, encoder, entries, keys, score)

        trained, reused = meta_train(plan.preset, hyper, encoder, entries, ctx.shared_dir, ctx.device, ctx.progress,
                                     say=say, sft=sft, diagnose=diagnose)
        train_cost = trained.cost
        train_cost.shared_by = shared_by(ctx.settings, ctx.task.name, names)
        train_cost.artifact = f"t2l-hypernet/{trained.key[:16]}"
        train_cost.details = {**train_cost.details, "reused": reused}
        return entries, costs, trained, train_cost, keys

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        plan = self._planned(ctx)
        s, preset, names, hyper, encoder = plan.s, plan.preset, plan.names, plan.hyper, plan.encoder
        per_query, n_lora = plan.per_query, plan.n_lora
        text, source = desc.for_target(ctx.task.name, s.descriptions, ctx.seed, names, s.description)
        entries, costs, trained, train_cost, keys = self._trained(ctx, plan)

        with PhaseMeter("generate", ctx.device) as meter:
            with meter.count():
                emb, flops = encoder.embed([text])
            with meter.count():
                state = join_state(trained.lora(emb[0]), keys)
            meter.add(flops_analytic=flops + trained.net.flops())
            adapter = write_adapter(state, entries[0].adapter, Path(ctx.workdir) / "adapter")
        use = self._charge(ctx, meter.cost, costs + [train_cost], per_query, "one hypernetwork forward pass")
        return Adaptation(
            kind="adapter", adapter_dir=str(adapter), labels_used=0, costs=costs + [train_cost, meter.cost],
            budget=use, per_query_extra_flops=per_query, lora_params=n_lora,
            variant="" if s.description is None else "custom description",
            details={"preset": preset.name, "variant": hyper.variant, "mode": hyper.mode, "encoder": encoder.name,
                     "library": names, "description": text, "description_source": source,
                     "hypernet": str(trained.folder), "hypernet_key": trained.key,
                     "meta_train_loss": {"first": train_cost.details.get("first_loss"),
                                         "final": train_cost.details.get("final_loss")},
                     "library_checks": {e.task: {"entry": e.key[:16], **e.checks} for e in entries},
                     "reconstruction": trained.info.get("reconstruction")})


def _reconstruction(trained, encoder: desc.DescriptionEncoder, entries, keys: list[str], score) -> dict:
    """DnD's seen-task check (diagnostics.reconstruction) on the hypernetwork: per library task, the LoRA generated
    from its first training description (seen) and its first evaluation description (held back), against the task's
    final library LoRA (what recon trains to); with `score`, that LoRA's accuracy on the task's own checked items."""
    import time

    from baselines.dnd.diagnostics import reconstruction
    from baselines.dnd.generator import seen_task_accuracy

    start = time.perf_counter()

    def generate(texts: list[str]) -> dict:
        emb, _ = encoder.embed(texts[:1])
        return join_state(trained.lora(emb[0]), keys)

    seen = {e.task: [desc.load(e.task).train[0]] for e in entries}
    held = {e.task: [desc.load(e.task).eval[0]] for e in entries}
    out = reconstruction(generate, entries, seen, held, targets={e.task: e.state() for e in entries})
    if score is not None:
        out.update(seen_task_accuracy({e.task: score(e.task, generate(seen[e.task])) for e in entries}, entries))
    out["wall_s"] = round(time.perf_counter() - start, 3)
    return out
