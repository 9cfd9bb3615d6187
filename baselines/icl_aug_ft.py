"""icl_aug_ft: ICL-augmented fine-tuning (Lampinen et al. 2025, arXiv 2505.00661), on the shared trainer.

A generator model (the base model itself by default; any model config by name, a separate arm labelled with
the teacher's name) writes augmentations of the adaptation pool in an `augment` phase (baselines/augmentation.py:
local per unit, global with the pool in context), then a LoRA is trained on the original units and the
augmentations together through `harness.trainer` (baselines/lora.py `tune`). The augment phase is metered and
charged to the budget like the training it precedes, so the comparison with plain fine-tuning and ICL is matched
on what it really spends; a FLOP budget that cannot pay for the augmentation (at its token caps) and one training
step is refused before any compute.

Knowledge pools (rows with `kind: statement`, tasks/generalization/) are split into sentences, as the paper does:
each its own example under its document's context line (`independent`), or after the document's earlier
sentences (`cumulative`), or whole documents (`none`). Other tasks' examples stay as they are, and augmentation
there means label-preserving paraphrases of the question (local) and rationales for the answer (global).
`augment.kinds: []` trains on the (split) originals alone through the same path: the control that separates
the effect of augmentation from that of sentence splitting.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from harness import artifacts, store
from harness.config_checks import as_float, as_int
from harness.costs import PhaseCost, PhaseMeter
from harness.errors import BudgetTooSmall, HarnessError
from harness.strategy import AdaptContext, Adaptation, ReportPage, Strategy
from harness.strategy_settings import settings_from
from harness.trainer import predict_train_flops

from baselines import augmentation as aug
from baselines.lora import LoraTuningSettings, labeled_allowed, tune

KINDS = ("local", "global")
SPLITS = ("independent", "cumulative", "none")


@dataclass
class AugmentSettings:
    """configs/strategy/icl_aug_ft.yaml `augment`."""

    kinds: list[str]  # local, global; [] trains on the originals alone (the control)
    prompts: str  # configs/icl_aug_prompts/<name>.yaml; auto: knowledge for statement pools, task otherwise
    generator: str | None  # a model config (configs/model/) that writes the augmentations; null: the base model
    samples: int  # local outputs per unit
    temperature: float  # 0: greedy
    max_new_tokens: int  # per local output
    global_max_new_tokens: int  # per global output
    prefix_cache: bool  # encode each shard's shared prefix once (a KV cache every document's continuation reads)
    rotations: int  # global: how many shufflings of the pool into shards each document is augmented in
    shard_tokens: int | None  # global: most tokens of documents in one shard (null: what the window holds)
    max_units: int | None  # local: augment at most this many units (a seeded draw; null: all)
    max_documents: int | None  # global: ask about at most this many documents (a seeded draw; null: all); all stay
    # in context
    filter_unknown_words: bool  # knowledge pools: drop a statement using a word absent from the data and prompts
    sentence_split: str  # independent | cumulative | none (knowledge pools)
    chat: bool  # prompt through the generator's chat template, when it has one
    seed: int  # draws units and shards and samples outputs; fixed across the cell's seeds (they vary training only)

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or len(set(self.kinds)) != len(self.kinds):
            raise HarnessError(f"strategy.augment.kinds must be distinct names among {', '.join(KINDS)} (got "
                               f"{list(self.kinds)}): e.g. strategy.augment.kinds=[local,global]")
        if self.sentence_split not in SPLITS:
            raise HarnessError(f"strategy.augment.sentence_split must be one of {', '.join(SPLITS)} (got "
                               f"{self.sentence_split!r})")
        for key in ("samples", "max_new_tokens", "global_max_new_tokens", "rotations"):
            as_int(getattr(self, key), f"strategy.augment.{key}", minimum=1)
        for key in ("shard_tokens", "max_units", "max_documents"):
            as_int(getattr(self, key), f"strategy.augment.{key}", minimum=1, allow_none=True)
        if as_float(self.temperature, "strategy.augment.temperature") < 0:
            raise HarnessError(f"strategy.augment.temperature must be >= 0 (got {self.temperature!r})")
        if self.samples > 1 and self.temperature == 0:
            raise HarnessError(f"strategy.augment.samples={self.samples} needs strategy.augment.temperature > 0 "
                               "(greedy decoding would write the same output each time)")
        if self.prompts != "auto":
            aug.Prompts.load(self.prompts)


@dataclass
class IclAugSettings(LoraTuningSettings):
    """configs/strategy/icl_aug_ft.yaml: the LoRA trainer's settings (as lora.yaml) and the augmentation's."""

    augment: AugmentSettings


def _write_outputs(folder: Path, outputs, cost: PhaseCost, counts: aug.AugmentStats) -> None:
    rows = [{"kind": kind, "doc": u.doc, "context": u.context, "text": u.text, "output": text}
            for u, kind, text in outputs]
    (folder / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store.write_json_atomic(folder / "built.json", {"cost": cost.to_dict(), "stats": counts.to_dict()})


def _read_outputs(folder: Path):
    try:
        built = json.loads((folder / "built.json").read_text())
        rows = [json.loads(line) for line in (folder / "outputs.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return None
    outputs = [(aug.Unit(r["doc"], r["context"], r["text"]), r["kind"], r["output"]) for r in rows]
    return outputs, PhaseCost.from_dict(built["cost"]), aug.AugmentStats(**built["stats"])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _split_cue(prompt: str) -> tuple[str, str]:
    """A labeled prompt's question and its answer cue (a last short line ending with ':', e.g. 'Answer:')."""
    question = aug.question_of(prompt)
    return question, prompt.rstrip()[len(question):] if prompt.rstrip().startswith(question) else ""


class IclAugmentedFineTuning(Strategy):
    def validate(self, settings) -> None:
        settings_from(IclAugSettings, settings)

    def fingerprint(self, settings) -> str | None:
        """The prompt files are inputs outside the config: editing one makes new cells."""
        name = settings_from(IclAugSettings, settings).augment.prompts
        names = ("knowledge", "task") if name == "auto" else (name,)
        return hashlib.sha256("".join(_digest(aug.Prompts.load(n).path) for n in names).encode()).hexdigest()

    def report_pages(self) -> list[ReportPage]:
        from baselines.icl_aug_report import INTRO, generalization_table

        return [ReportPage("icl_vs_ft.md", "ICL versus fine-tuning versus ICL-augmented fine-tuning", INTRO,
                           generalization_table)]

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        b = ctx.budget
        tuning = settings_from(IclAugSettings, ctx.settings)
        a = tuning.augment
        # The whole pool in its own order (the trainer shuffles by seed): what augmentation reads is then the same
        # for every seed, and its outputs are built once; a k-shot or label-limited draw is the seed's own.
        whole = tuning.shots is None and b.kind != "examples"
        drawn = ctx.task.pool_docs if whole else ctx.task.sample_pool(tuning.shots, ctx.seed)
        docs, labels_cut = labeled_allowed(b, drawn)
        knowledge = bool(docs) and all(d.get("kind") == "statement" for d in docs)
        prompts = aug.Prompts.load(a.prompts if a.prompts != "auto" else ("knowledge" if knowledge else "task"))
        documents, sentences, originals = self._units(ctx, docs, knowledge, a.sentence_split)
        rng = random.Random(a.seed)  # the augmentation's own seed: every seed of the cell trains on the same outputs
        distinct: dict[str, aug.Unit] = {}
        for unit in sentences:  # a statement repeated in several documents is augmented once
            distinct.setdefault(aug.normalized(unit.text), unit)
        local_units = list(distinct.values()) if knowledge else documents
        if a.max_units is not None and len(local_units) > a.max_units:
            local_units = sorted(rng.sample(local_units, a.max_units), key=lambda u: (u.doc, u.text))
        asked = documents  # global: every document sits in context; these are the ones asked about
        if a.max_documents is not None and len(asked) > a.max_documents:
            asked = sorted(rng.sample(asked, a.max_documents), key=lambda u: u.doc)

        costs, augmented, stats, spent, plan_info = [], [], None, 0.0, {}
        if a.kinds:
            cost, raw, stats, plan_info = self._augment(ctx, tuning, prompts, knowledge, local_units, documents,
                                                        asked, originals)
            if stats.outputs and not any(
                    (aug.parse_statements(t, prompts.stop) if knowledge
                     else aug.parse_passage(t, prompts.stop, first_line=k == "local")) for _, k, t in raw):
                raise HarnessError(f"augmentation wrote nothing parseable in {stats.outputs} outputs of "
                                   f"{prompts.path}: e.g. {raw[0][2][:160]!r}; fix the prompt file or use a "
                                   "stronger strategy.augment.generator")
            vocabulary = None
            if knowledge and a.filter_unknown_words:
                vocabulary = aug.vocabulary_of([u.context + " " + u.text for u in documents])
            augmented = aug.statements(raw, prompts, [u.text for u in sentences] or [u.text for u in documents],
                                       vocabulary, stats, knowledge)
            cost.details.update(stats.to_dict())
            costs.append(cost)
            spent = {"flops": float(cost.flops_measured), "seconds": cost.wall_s}.get(b.kind, 0.0)
            if b.kind == "seconds" and spent >= b.amount:
                raise BudgetTooSmall(f"budget {b.name} ({b.amount:g} s): augmentation alone took {spent:.1f} s: raise "
                                     "budget.amount or lower strategy.augment.max_units/max_documents")
        extra = self._examples(ctx, augmented, knowledge)
        self._save(ctx, augmented)
        examples = originals + extra
        result, train_cost, use, per_query, n_lora = tune(ctx, tuning, examples, labels_cut=labels_cut,
                                                           spent_before=spent, before_what="augmentation")
        costs.append(train_cost)
        by_kind = {k: sum(1 for _, kind, _ in augmented if kind == k) for k in a.kinds}
        return Adaptation(
            kind="adapter", adapter_dir=result.adapter_dir, labels_used=len(docs), costs=costs, budget=use,
            per_query_extra_flops=per_query, lora_params=n_lora,
            variant=f"teacher {a.generator}" if a.generator else "",
            details={"knowledge_pool": knowledge, "pool_documents": len(docs), "original_examples": len(originals),
                     "augmented_examples": len(extra), "augmented_by_kind": by_kind, "kinds": list(a.kinds),
                     "sentence_split": a.sentence_split if knowledge else "n/a", "prompts": prompts.path.name,
                     **plan_info, "steps": result.steps, "sequences_processed": result.sequences_processed,
                     "train_tokens": result.tokens, "losses": result.losses,
                     "augment": stats.to_dict() if stats else None})

    def _augment(self, ctx: AdaptContext, tuning: IclAugSettings, prompts: aug.Prompts, knowledge: bool,
                 local_units: list[aug.Unit], documents: list[aug.Unit], asked: list[aug.Unit], originals):
        """Plan, check the budget, then write each kind of augmentation, or reuse it: each kind is an artifact
        keyed by everything that determines it (generator, prompts, units, settings, the augmentation's seed),
        built once under the artifact lock in the model's shared folder and reused by the cells that ask for the
        same (other seeds, other splits of one pool, the arm with both kinds). A reused kind is charged what it
        cost when it was built, and says so."""
        a = tuning.augment
        model, tokenizer, generator = self._generator(ctx, a)
        decoder = aug.Decoder(model, tokenizer, None, a.chat, generator)
        work = aug.plan(decoder, prompts, local_units, documents, tuple(a.kinds), knowledge, a.samples,
                        a.max_new_tokens, a.global_max_new_tokens, a.rotations, a.shard_tokens, a.prefix_cache,
                        a.seed, ask=asked)
        self._check_budget(ctx, tuning, originals, work)
        in_context = hashlib.sha256(json.dumps([(u.doc, u.context, u.text) for u in documents]).encode()).hexdigest()
        identity = {"model": ctx.model_cfg or ctx.model_name, "generator": generator, "prompts": _digest(prompts.path),
                    "pool": in_context,
                    "settings": {k: getattr(a, k) for k in ("samples", "temperature", "max_new_tokens",
                                                             "global_max_new_tokens", "prefix_cache", "rotations",
                                                             "shard_tokens", "chat", "seed")}}
        root = Path(ctx.shared_dir or ctx.workdir) / "icl_aug"
        raw, parts, stats = [], {}, aug.AugmentStats()
        total = PhaseCost(phase="augment")
        for kind in a.kinds:
            part = work.only(kind)
            units = [u for u, _ in part.local] + [u for _, items in part.shards for u, _ in items]
            key = hashlib.sha256(json.dumps({**identity, "kind": kind, "units": [(u.doc, u.context, u.text)
                                                                                  for u in units]},
                                            sort_keys=True, default=str).encode()).hexdigest()

            def make(folder: Path, part=part, kind=kind):
                with PhaseMeter("augment", ctx.device) as meter:
                    decoder.meter = meter
                    outputs, counts = aug.run(decoder, prompts, part, a.temperature, a.prefix_cache, a.seed,
                                              ctx.progress)
                _write_outputs(folder, outputs, meter.cost, counts)

            (outputs, cost, counts), reused = artifacts.get_or_build(
                root / f"{kind}-{key[:16]}", _read_outputs, make, f"the {kind} augmentations of {ctx.task.name}")
            raw += outputs
            stats.add(counts)
            total.wall_s += cost.wall_s
            total.flops_measured += cost.flops_measured
            total.flops_analytic += cost.flops_analytic
            total.tokens += cost.tokens
            total.peak_mem_bytes = max(total.peak_mem_bytes, cost.peak_mem_bytes)
            total.peak_mem_kind, total.device = cost.peak_mem_kind, cost.device
            parts[kind] = {"reused": reused, "key": key, "wall_s": cost.wall_s, "flops_measured": cost.flops_measured,
                           "flops_analytic": cost.flops_analytic, "outputs": counts.outputs}
        total.details = {"generator": generator, "prompts": prompts.path.name, "prompts_sha256": _digest(prompts.path),
                         "flops_upper_bound": work.flops_upper, "kinds": parts,
                         "note": "a reused kind is charged what it cost when it was built"}
        plan_info = {"local_prompts": len(work.local), "global_shards": len(work.shards),
                     "global_documents": sum(len(items) for _, items in work.shards)}
        return total, raw, stats, plan_info

    @staticmethod
    def _units(ctx: AdaptContext, docs: list[dict], knowledge: bool, split: str):
        """(document units, sentence units, original training examples)."""
        task = ctx.task
        documents, sentences, originals = [], [], []
        for i, doc in enumerate(docs):
            prompt, completion = task.labeled_example(doc)
            documents.append(aug.Unit(i, prompt, completion.strip()))
            if not knowledge:
                originals.append(task.training_pair(prompt, completion))
                continue
            parts = aug.split_sentences(completion)
            sentences += [aug.Unit(i, prompt, s) for s in parts]
            if split == "none":
                originals.append(task.training_pair(prompt, completion))
            for k, sentence in enumerate(parts if split != "none" else []):
                context = prompt if split == "independent" or k == 0 else prompt + " " + " ".join(parts[:k])
                originals.append(task.training_pair(context, " " + sentence))
        return documents, sentences, originals

    @staticmethod
    def _examples(ctx: AdaptContext, augmented, knowledge: bool) -> list[tuple[str, str]]:
        task, out = ctx.task, []
        for unit, kind, text in augmented:
            if knowledge:
                out.append(task.training_pair(unit.context, " " + text))
            elif kind == "local":  # a rewritten question, under the original's answer cue, with its answer
                _, cue = _split_cue(unit.context)
                out.append(task.training_pair(text + cue, " " + unit.text))
            else:  # a rationale, after the question and its answer: the answer's own tokens are unchanged
                out.append(task.training_pair(unit.context + " " + unit.text + "\nWhy:", " " + text))
        return out

    @staticmethod
    def _generator(ctx: AdaptContext, a: AugmentSettings):
        if not a.generator:
            return ctx.model, ctx.tokenizer, ctx.model_name or "base model"
        from omegaconf import OmegaConf

        from harness.models import load_model
        from harness.settings import CONFIG_DIR

        path = CONFIG_DIR / "model" / f"{a.generator}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
            raise HarnessError(f"strategy.augment.generator {a.generator!r} is not a model config: use one of {known}")
        dtype = next(ctx.model.parameters()).dtype
        loaded = load_model(OmegaConf.load(path), ctx.device, dtype)
        return loaded.model, loaded.tokenizer, a.generator

    @staticmethod
    def _check_budget(ctx: AdaptContext, tuning: IclAugSettings, originals, work: aug.AugmentPlan) -> None:
        """A FLOP budget must pay for the augmentation at its token caps and one training step, before compute."""
        b = ctx.budget
        if b.kind != "flops" or not originals:
            return
        step = predict_train_flops(ctx.model, ctx.tokenizer, originals, tuning.trainer(), 1, seed=ctx.seed)
        from harness.pricing import lora_serving

        serving = b.horizon * lora_serving(ctx.pricing, ctx.model, tuning.trainer())[0]
        need = work.flops_upper + step + serving
        if need > b.amount:
            raise BudgetTooSmall(
                f"budget {b.name} ({b.amount:.3g} FLOPs) cannot pay for augmentation (up to ~{work.flops_upper:.3g} "
                f"FLOPs: {len(work.local)} local prompts, {sum(len(i) for _, i in work.shards)} global documents), "
                f"one training step (~{step:.3g}) and serving {b.horizon} queries (~{serving:.3g}): raise "
                "budget.amount, or lower strategy.augment.max_units / max_documents / max_new_tokens")

    @staticmethod
    def _save(ctx: AdaptContext, augmented) -> None:
        path = Path(ctx.workdir) / "augmented.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for unit, kind, text in augmented:
                f.write(json.dumps({"kind": kind, "doc": unit.doc, "source": unit.text, "statement": text}) + "\n")
