"""The controlled generalization suite (after Lampinen et al. 2025, arXiv 2505.00661) as lm-eval tasks.

The paper's data was not released; these generators build data of the same design from a seed:
- gen_reversals (reversals.py): comparative facts, tested reversed;
- gen_syllogisms (syllogisms.py): two premises, tested on the conclusion;
- gen_semantic (semantic.py): a category hierarchy, tested on rephrasings, reversals, syllogisms and
  held-out categories (dataset option `split`).
Everything comes from `random.Random(seed)`, so equal options give equal rows in every process.

Rows (tasks/generalization/*.yaml score them; strategies read them):
- pool: one per training document: id, kind "statement", context (the title line), choices [text],
  gold 0, split "pool", doc (its number), text (the body: sentences ending in ".");
- eval: id, kind "test", context, choices, gold (index), split (the test split's name), doc -1.
The data fingerprint is a sha256 of the rows, so a changed generator or option makes new cells.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from harness.errors import HarnessError
from harness.generalization import reversals, semantic, syllogisms
from harness.generalization.base import Generation, eval_rows, pool_rows, verbatim_leaks
from harness.pools import PoolInfo


@dataclass(frozen=True)
class GeneratedTask:
    name: str
    defaults: dict  # every dataset option, with its default (the YAML's dataset_kwargs repeat them)
    generate: Callable[..., Generation]
    check: Callable[[dict], str | None]  # a problem with the options' sizes, or None
    split: Callable[[dict], str]  # the test split the options select


def _check_reversals(o: dict) -> str | None:
    if not 1 <= o["n_facts"] <= reversals.max_facts():
        return (f"n_facts={o['n_facts']} needs {2 * o['n_facts']} distinct nonsense names: use 1 to "
                f"{reversals.max_facts()}")
    if not 1 <= o["articles"] <= len(reversals.PREFIXES):
        return f"articles={o['articles']}: each fact has at most {len(reversals.PREFIXES)} distinct article openings"
    return None


def _check_syllogisms(o: dict) -> str | None:
    if not 1 <= o["n_problems"] <= syllogisms.max_problems():
        return (f"n_problems={o['n_problems']} needs {3 * o['n_problems']} distinct nonsense names: use 1 to "
                f"{syllogisms.max_problems()}")
    return None


def _check_semantic(o: dict) -> str | None:
    if o["split"] not in semantic.SPLITS:
        return f"unknown split {o['split']!r}: use one of {', '.join(semantic.SPLITS)}"
    if o["n_roots"] < 2:
        return f"n_roots={o['n_roots']}: relations link categories under different roots, so use n_roots >= 2"
    if o["mids_per_root"] < 1 or o["leaves_per_mid"] < 1 or o["n_verbs"] < 1:
        return "mids_per_root, leaves_per_mid and n_verbs must each be >= 1"
    leaves = o["n_roots"] * o["mids_per_root"] * o["leaves_per_mid"]
    if not 0 <= o["holdout"] < leaves:
        return f"holdout={o['holdout']}: hold out 0 to {leaves - 1} of the {leaves} leaf categories"
    if not 2 <= o["n_choices"] <= 4:
        return f"n_choices={o['n_choices']}: use 2 to 4"
    needed = semantic.words_needed(o["n_roots"], o["mids_per_root"], o["leaves_per_mid"], o["n_verbs"])
    if needed > semantic.capacity():
        return (f"the hierarchy needs up to {needed} nonsense words but {semantic.capacity()} can be made: "
                "use fewer roots, mid categories or leaves")
    return None


TASKS = {t.name: t for t in (
    GeneratedTask("gen_reversals", {"seed": 0, "n_facts": 100, "articles": 4},
                  lambda seed, n_facts, articles: reversals.generate(seed, n_facts, articles),
                  _check_reversals, lambda o: reversals.SPLIT),
    GeneratedTask("gen_syllogisms", {"seed": 0, "n_problems": 69},
                  lambda seed, n_problems: syllogisms.generate(seed, n_problems),
                  _check_syllogisms, lambda o: syllogisms.SPLIT),
    GeneratedTask("gen_semantic", {"seed": 0, "split": "rephrased", "n_roots": 4, "mids_per_root": 4,
                                   "leaves_per_mid": 5, "holdout": 6, "n_verbs": 4, "n_choices": 4},
                  lambda split, **sizes: semantic.generate(**sizes), _check_semantic, lambda o: o["split"]),
)}


def options(task: str, given: dict, strict: bool = True) -> dict:
    """The task's full options: `given` over the defaults, checked. lm-eval's hook also receives the
    task's metadata, so it passes strict=False and unknown keys are dropped."""
    spec = TASKS[task]
    unknown = sorted(set(given) - set(spec.defaults))
    if strict and unknown:
        raise HarnessError(f"task {task}: unknown dataset option(s) {', '.join(unknown)}: "
                           f"use {', '.join(spec.defaults)}")
    out = {**spec.defaults, **{k: v for k, v in given.items() if k in spec.defaults}}
    for key, value in out.items():
        if key == "split":
            out[key] = str(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise HarnessError(f"task {task}: dataset option {key} must be an integer (got {value!r})")
    problem = spec.check(out)
    if problem:
        raise HarnessError(f"task {task}: {problem}")
    return out


@lru_cache(maxsize=16)
def _generation(task: str, frozen: tuple) -> Generation:
    gen = TASKS[task].generate(**dict(frozen))
    leaks = verbatim_leaks(gen)
    if leaks:  # a generator bug: a test statement would be answerable by copying training text
        raise RuntimeError(f"{task}: {len(leaks)} test statements occur in training documents, e.g. {leaks[0]}")
    return gen


def generate(task: str, **given) -> Generation:
    """The generation for these options (cached; treat it as read-only)."""
    opts = options(task, given)
    split = TASKS[task].split(opts)
    try:
        gen = _generation(task, tuple(sorted(opts.items())))
    except ValueError as exc:  # the vocabulary ran out for these sizes
        raise HarnessError(f"task {task}: {exc}: use smaller sizes") from None
    if not gen.items.get(split):
        raise HarnessError(f"task {task}: these sizes leave split {split!r} without items: use larger sizes")
    return gen


@dataclass
class GeneratedPoolInfo(PoolInfo):
    """How the rows were made: the generator and every option (the record's data.pool)."""
    generator: str = ""
    options: dict = field(default_factory=dict)
    eval_split: str = ""


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def build(task: str, **given) -> tuple[list[dict], list[dict], GeneratedPoolInfo]:
    """(pool rows, eval rows, how they were made) for these options."""
    opts = options(task, given)
    split = TASKS[task].split(opts)
    gen = generate(task, **opts)
    pool, evaluated = pool_rows(gen), eval_rows(gen, split)
    source = f"generated:{task}"
    info = GeneratedPoolInfo(
        eval_source=f"{source}:{split}", pool_source=f"{source}:pool", carved=False, carve_seed=None,
        leak_rules={"generated": "no test statement (context + gold choice) occurs in a training document"},
        n_pool=len(pool), n_eval=len(evaluated),
        fingerprints={f"{source}:pool": _digest(pool), f"{source}:{split}": _digest(evaluated)},
        generator=task, options=opts, eval_split=split)
    return pool, evaluated, info


def _hook(task: str):
    """lm-eval `custom_dataset` hook: a DatasetDict with `pool` and `eval` splits, and its `pool_info`."""

    def load(**kwargs):
        import datasets

        pool, evaluated, _ = build(task, **options(task, kwargs, strict=False))
        return datasets.DatasetDict({"pool": datasets.Dataset.from_list(pool),
                                     "eval": datasets.Dataset.from_list(evaluated)})

    def pool_info(**dataset_kwargs) -> GeneratedPoolInfo:
        return build(task, **dataset_kwargs)[2]

    load.pool_info = pool_info  # how harness/tasks.py asks a custom loader for its record
    return load


load_reversals = _hook("gen_reversals")
load_syllogisms = _hook("gen_syllogisms")
load_semantic = _hook("gen_semantic")
