"""Evaluation splits and adaptation pools that never share an item.

Every task exposes two splits to lm-eval: `pool` (what strategies may learn from: labeled
examples, unlabeled prompts) and `eval` (what is scored). A task with a train split takes its pool
from it; a task without one carves a seeded pool out of its evaluation split and scores the rest.
No evaluated item may leak into a demonstration, a training example or a generator condition, so
a pool item is dropped when (harness/leaks.py):
- its text (`dedup_fields`) equals an evaluated item's, or is a near-duplicate of one (character
  8-gram Jaccard >= 0.8, lower-cased, whitespace collapsed);
- its text or its answer contains an evaluated item's gold answer (`answer`) of >= 20 characters.
Where a dataset holds near-twins, carving moves whole groups so that twins land on the same side:
rows with equal `group_fields` values (WinoGrande pairs the same sentence with one word changed and
the answer flipped: the option pair), and with `group_overlap`, rows linked by one's gold answer
appearing inside another's text (HellaSwag's contexts are consecutive windows of one caption: a
window's gold ending is the start of the next window's context).

The leak rules are exact (no sampling); the splits they produce are cached under
HARNESS_CACHE_DIR/pools, keyed by the data's fingerprints and the options, since finding
near-duplicates over ten thousand rows takes seconds.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Callable

from harness.data import load_split

NGRAM, JACCARD, ANSWER_CHARS = 8, 0.8, 20  # the leak rules (module docstring)
_RULES_VERSION = 1  # bump when a rule changes: cached splits are then rebuilt


@dataclass
class PoolInfo:
    eval_source: str
    pool_source: str
    carved: bool  # pool cut out of the evaluation split
    carve_seed: int | None
    carved_rows: list[int] = field(default_factory=list)  # rows of the source split taken for the pool
    dropped_duplicates: int = 0  # pool rows removed because an eval item has the same text
    dropped_near_duplicates: int = 0  # ... a text with 8-gram Jaccard >= 0.8 to an eval item's
    dropped_answer_leaks: int = 0  # ... holding an eval item's gold answer (>= 20 characters)
    linked_groups: int = 0  # carving groups of more than one row (group_fields, group_overlap)
    leak_rules: dict = field(default_factory=dict)
    n_pool: int = 0
    n_eval: int = 0
    fingerprints: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _text_key(row: dict, fields: list[str]) -> str:
    parts = [" ".join(str(row.get(f, "")).lower().split()) for f in fields]
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()


def _groups(rows: list[dict], fields: list[str] | None) -> list[list[int]]:
    """Row indices grouped by the unordered values of `fields` (every row alone when no fields)."""
    if not fields:
        return [[i] for i in range(len(rows))]
    by_key: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        key = tuple(sorted(" ".join(str(row.get(f, "")).lower().split()) for f in fields))
        by_key.setdefault(key, []).append(i)
    return list(by_key.values())


def _text(row: dict, fields: list[str]) -> str:
    return " ".join(str(row.get(f) or "") for f in fields)


def answer_getter(answer) -> Callable[[dict], str] | None:
    """A row's gold answer text: `answer` is a field name, a function of the row, or None."""
    if answer is None or callable(answer):
        return answer
    return lambda row: str(row.get(answer) or "")


def _link_groups(groups: list[list[int]], rows: list[dict], fields: list[str], gold) -> list[list[int]]:
    """Merge groups whose rows are linked: one row's gold answer occurs inside another row's text."""
    from harness.leaks import contained

    owner = {i: g for g, group in enumerate(groups) for i in group}
    parent = list(range(len(groups)))

    def find(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for pair in contained([gold(r) for r in rows], [_text(r, fields) for r in rows], ANSWER_CHARS, NGRAM):
        a, b = find(owner[pair.left]), find(owner[pair.right])
        if a != b:
            parent[max(a, b)] = min(a, b)
    merged: dict[int, list[int]] = {}
    for g, group in enumerate(groups):
        merged.setdefault(find(g), []).extend(group)
    return [sorted(group) for group in merged.values()]


def _leaking(pool: list[dict], evaluated: list[dict], fields: list[str], gold) -> tuple[set[int], set[int]]:
    """Pool rows that are near-duplicates of an evaluated row, and pool rows holding an eval gold answer."""
    from harness.leaks import contained, near_duplicates

    near = {p.right for p in near_duplicates([_text(r, fields) for r in evaluated],
                                             [_text(r, fields) for r in pool], JACCARD, NGRAM)}
    holds = set()
    if gold is not None:
        hay = [f"{_text(r, fields)}\n{gold(r)}" for r in pool]
        holds = {p.right for p in contained([gold(r) for r in evaluated], hay, ANSWER_CHARS, NGRAM)}
    return near, holds


def build_splits(path: str, name: str | None, eval_split: str, pool_split: str | None = None,
                 pool_size: int | None = None, pool_seed: int = 1234, dedup_fields: list[str] | None = None,
                 group_fields: list[str] | None = None, answer=None,
                 group_overlap: bool = False) -> tuple[list[dict], list[dict], PoolInfo]:
    """Return (pool rows, eval rows, how they were made); see the module docstring for the rules."""
    evaluated = load_split(path, name, eval_split)
    fingerprints = {str(evaluated.ref): evaluated.fingerprint}
    pool_src = load_split(path, name, pool_split) if pool_split else None
    if pool_src is not None:
        fingerprints[str(pool_src.ref)] = pool_src.fingerprint
    gold = answer_getter(answer)
    if group_overlap and (gold is None or not dedup_fields):
        raise ValueError(f"{evaluated.ref}: group_overlap needs `answer` and `dedup_fields`")
    options = dict(pool_split=pool_split, pool_size=pool_size, pool_seed=pool_seed, dedup_fields=dedup_fields,
                   group_fields=group_fields, answer=_describe(answer), group_overlap=group_overlap)
    cache = _cache_path(fingerprints, options)
    plan = _read_plan(cache)
    if plan is None:
        plan = _plan(evaluated, pool_src, gold, **{k: v for k, v in options.items() if k != "answer"})
        _write_plan(cache, plan)
    source_pool = pool_src.rows if pool_src is not None else evaluated.rows
    pool_rows = [source_pool[i] for i in plan["pool"]]
    eval_rows = [evaluated.rows[i] for i in plan["eval"]]
    info = PoolInfo(evaluated.source, (pool_src or evaluated).source, carved=pool_src is None,
                    carve_seed=None if pool_src is not None else pool_seed, **plan["info"])
    info.n_pool, info.n_eval = len(pool_rows), len(eval_rows)
    info.fingerprints = fingerprints
    info.leak_rules = {"ngram": NGRAM, "jaccard": JACCARD, "answer_chars": ANSWER_CHARS,
                       "answer": _describe(answer)}
    return pool_rows, eval_rows, info


def _plan(evaluated, pool_src, gold, *, pool_split, pool_size, pool_seed, dedup_fields, group_fields,
          group_overlap) -> dict:
    """Which source rows make the pool and the eval split, and what was dropped (JSON-able)."""
    info: dict = {}
    if pool_src is not None:
        pool_idx, eval_idx = list(range(len(pool_src.rows))), list(range(len(evaluated.rows)))
        pool_rows = pool_src.rows
    else:
        rows = evaluated.rows
        if not pool_size or pool_size >= len(rows):
            raise ValueError(f"{evaluated.ref}: pool_size must be between 1 and {len(rows) - 1}")
        groups = _groups(rows, group_fields)
        if group_overlap:
            groups = _link_groups(groups, rows, dedup_fields, gold)
        info["linked_groups"] = sum(len(g) > 1 for g in groups)
        random.Random(pool_seed).shuffle(groups)
        taken = []
        for group in groups:  # whole groups, until the pool has at least pool_size rows
            if len(taken) >= pool_size:
                break
            taken.extend(group)
        taken = sorted(taken)
        taken_set = set(taken)
        pool_idx, eval_idx = taken, [i for i in range(len(rows)) if i not in taken_set]
        pool_rows = rows
        info["carved_rows"] = taken
    eval_rows = [evaluated.rows[i] for i in eval_idx]
    if dedup_fields:
        eval_keys = {_text_key(r, dedup_fields) for r in eval_rows}
        kept = [i for i in pool_idx if _text_key(pool_rows[i], dedup_fields) not in eval_keys]
        info["dropped_duplicates"] = len(pool_idx) - len(kept)
        near, holds = _leaking([pool_rows[i] for i in kept], eval_rows, dedup_fields, gold)
        info["dropped_near_duplicates"] = len(near)
        info["dropped_answer_leaks"] = len(holds - near)
        pool_idx = [i for k, i in enumerate(kept) if k not in near and k not in holds]
    return {"pool": pool_idx, "eval": eval_idx, "info": info}


def _describe(answer) -> str | None:
    """A name for the answer rule that does not depend on where the project sits on disk."""
    if answer is None or isinstance(answer, str):
        return answer
    from harness.settings import PROJECT_ROOT

    module = str(answer.__module__)
    if module.startswith(str(PROJECT_ROOT) + "/"):  # lm-eval names a YAML's !function module by its path
        module = module[len(str(PROJECT_ROOT)) + 1:]
    return f"{module}.{answer.__qualname__}"


def _cache_path(fingerprints: dict, options: dict):
    from harness.settings import cache_dir

    payload = json.dumps({"rules": _RULES_VERSION, "data": fingerprints, "options": options}, sort_keys=True)
    return cache_dir() / "pools" / f"{hashlib.sha1(payload.encode()).hexdigest()[:16]}.json"


def _read_plan(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_plan(path, plan: dict) -> None:
    from harness.store import write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, plan)
    except OSError:  # a read-only cache only costs the recomputation next time
        pass


def load_task_dataset(**kwargs):
    """lm-eval `custom_dataset` hook: a DatasetDict with `pool` and `eval` splits.

    lm-eval passes the task's `metadata` and `dataset_kwargs` together; unknown keys are ignored.
    """
    import datasets

    pool, evaluated, _ = build_splits(**{k: v for k, v in kwargs.items() if k in _KWARGS})
    return datasets.DatasetDict({
        "pool": datasets.Dataset.from_list(pool),
        "eval": datasets.Dataset.from_list(evaluated),
    })


def pool_info_for(**dataset_kwargs) -> PoolInfo:
    return build_splits(**{k: v for k, v in dataset_kwargs.items() if k in _KWARGS})[2]


_KWARGS = {"path", "name", "eval_split", "pool_split", "pool_size", "pool_seed", "dedup_fields", "group_fields",
           "answer", "group_overlap"}


def checked_loader(task: str, check):
    """A `custom_dataset` hook that first checks every row of the splits it reads.

    `check(row)` returns None for a good row or a short description of what is wrong; the first bad
    row stops the run with one line naming the task, the split and the row.
    """
    from harness.errors import HarnessError

    def load(**kwargs):
        for split in (kwargs.get("eval_split"), kwargs.get("pool_split")):
            if not split:
                continue
            loaded = load_split(kwargs["path"], kwargs.get("name"), split)
            for i, row in enumerate(loaded.rows):
                problem = check(row) if isinstance(row, dict) else "not a JSON object"
                if problem:
                    raise HarnessError(f"task {task}: malformed row {i} of split {loaded.ref} ({loaded.source}): "
                                       f"{problem}; fix or re-download that file")
        return load_task_dataset(**kwargs)

    load.pool_info = pool_info_for
    return load
