"""LiveCodeBench data (`livecodebench/code_generation_lite`): release files, the evaluated window, the pool.

Data. The Hub repository ships each release increment as one raw jsonl file. A release version
names a set of them, the same sets as the `version_tag`s of LCB's (now removed) loading script:

    release_vN       test.jsonl ... testN.jsonl   every problem released up to vN (N = 1..6)
    release_latest   all six files
    vN               increment N alone            (v1 = test.jsonl, v2 = test2.jsonl, ...)
    vA_vB            increments A to B

Each file is read from the offline mirror, `$HARNESS_DATA_DIR/livecodebench/code_generation_lite/<file>`,
or else downloaded from the Hub at a pinned revision with huggingface_hub. Downloading the raw files
sidesteps the loading script, which datasets>=4 cannot run.

Selection. A contest-date window [start_date, end_date] (whole days, both ends included) picks the
evaluated problems. This is LCB's contamination control: score only problems published after the
model's training cutoff. (LCB compares contest datetimes with midnight of end_date, which drops a
problem timed later on that day; here the whole day counts.) The adaptation pool holds the
release's problems dated strictly before the window, so nothing a strategy learns from overlaps the
evaluated set or postdates it. When no problem predates the window, a seeded pool is carved out of
it instead, and the record says so.

Each file is validated once, whole, when it is first read: every row is parsed as a gradable problem
(problems.py), private tests included.

The documents given to lm-eval are those rows with these changes. `private_test_cases`, several MB per
row (GBs per release), is replaced by `private_tests_sha256`, the key under which this process keeps
it, so that documents stay small in Arrow, in every logged sample and in every hash of a document.
`harness_split` ("pool" or "eval"), `grading_timeout_s` and `grading_mode` are added.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from harness.errors import HarnessError
from harness.livecodebench.grading import DEFAULT_GRADING, DEFAULT_TIMEOUT_S, check_grading
from harness.livecodebench.problems import (TASK, keep_private_tests, malformed, one_line, parse_problem,
                                            private_tests_key)
from harness.pools import PoolInfo
from harness.settings import data_dir, hub_offline

HUB_REPO = "livecodebench/code_generation_lite"
# The Hub's main branch as of its last jsonl release (v6). Pinned so that a later conversion of the
# repository (to parquet, say) cannot change the data under a fixed config.
HUB_REVISION = "0fe84c3912ea0c4d4a78037083943e8f0c4dd505"
RELEASE_FILES = ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl")


# ------------------------------------------------------------------------------ releases and files

def release_files(version: str) -> list[str]:
    """The Hub files that make up a release version (see the module docstring)."""
    n, tag = len(RELEASE_FILES), str(version).strip()
    if tag == "release_latest":
        return list(RELEASE_FILES)
    cumulative = re.fullmatch(r"release_v(\d+)", tag)
    if cumulative and 1 <= int(cumulative[1]) <= n:
        return list(RELEASE_FILES[: int(cumulative[1])])
    span = re.fullmatch(r"v(\d+)(?:_v(\d+))?", tag)
    if span and 1 <= int(span[1]) <= int(span[2] or span[1]) <= n:
        return list(RELEASE_FILES[int(span[1]) - 1: int(span[2] or span[1])])
    raise HarnessError(f"{TASK}: unknown release_version {version!r}: use release_v1 ... release_v{n}, "
                       f"release_latest, vN or vA_vB (1 <= A <= B <= {n})")


@dataclass
class _ReleaseFile:
    name: str
    source: str  # "local:<path>" or "hub:<repo>@<revision>/<file>"
    sha256: str  # of the file's non-empty lines
    rows: list[dict]
    digests: list[str]  # sha256 of each row's line: selections are fingerprinted from these
    days: list[date]  # contest day of each row


_FILES: dict[tuple, _ReleaseFile] = {}

def _release_file(repo: str, name: str, revision: str | None) -> _ReleaseFile:
    path, source = _locate(repo, name, revision)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILES:  # parsing validates every row, private tests included: do it once
        _FILES[key] = _parse_file(path, name, source)
    return _FILES[key]


def _locate(repo: str, name: str, revision: str | None) -> tuple[Path, str]:
    root = data_dir()
    local = root / repo / name if root else None
    if local is not None and local.is_file():
        return local, f"local:{local}"
    where = f"no {local}" if local else "HARNESS_DATA_DIR is not set"
    try:
        from huggingface_hub import hf_hub_download

        # Offline, this still finds a file already in the Hub cache.
        path = hf_hub_download(repo_id=repo, repo_type="dataset", filename=name, revision=revision)
    except Exception as exc:  # network, missing file, auth: all end the same way for the user
        said = "Hub disabled" if hub_offline() else f"Hub said: {one_line(exc)[:200]}"
        raise HarnessError(f"{TASK}: release file {name} of {repo} not found ({where}; {said}): put it at "
                           f"$HARNESS_DATA_DIR/{repo}/{name} or run with Hub access") from None
    return Path(path), f"hub:{repo}@{revision or 'main'}/{name}"


def _parse_file(path: Path, name: str, source: str) -> _ReleaseFile:
    rows, digests, days, whole = [], [], [], hashlib.sha256()
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            whole.update(line + b"\n")
            where = f"{name}, row {number}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise malformed(where, source, f"not a JSON object ({one_line(exc)[:120]})") from None
            if not isinstance(row, dict):
                raise malformed(where, source, "not a JSON object")
            problem = parse_problem(row, where, source)
            keep_private_tests(row["private_test_cases"])
            rows.append(row)
            digests.append(hashlib.sha256(line).hexdigest())
            days.append(problem.contest_date.date())
    return _ReleaseFile(name, source, whole.hexdigest(), rows, digests, days)


# ------------------------------------------------------------------------------ selection and pool

@dataclass
class LCBPoolInfo(PoolInfo):
    """How the evaluated problems and the pool were chosen; everything needed to redo the selection."""
    release_version: str = ""
    files: list[str] = field(default_factory=list)
    revision: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    start_date: str | None = None
    end_date: str | None = None
    pool_rule: str = ""
    n_release: int = 0  # problems in the release's files, before the window
    n_after_window: int = 0  # problems dated after end_date: in neither split
    timeout_s: float = DEFAULT_TIMEOUT_S
    grading: str = ""  # lcb_runner or fair (see grading.py)


OPTIONS = ("path", "name", "release_version", "start_date", "end_date", "pool_size", "pool_seed", "revision",
           "timeout_s", "grading")


def build_splits(path: str = HUB_REPO, name: str | None = None, release_version: str = "release_v6",
                 start_date=None, end_date=None, pool_size: int = 64, pool_seed: int = 1234,
                 revision: str | None = HUB_REVISION, timeout_s: float = DEFAULT_TIMEOUT_S,
                 grading: str = DEFAULT_GRADING) -> tuple[list[dict], list[dict], LCBPoolInfo]:
    """(pool documents, eval documents, how they were chosen) for a release and contest-date window."""
    check_grading(grading)
    if name not in (None, "", "default"):
        raise HarnessError(f"{TASK}: dataset name {name!r} is not used (the Hub repo has no configs): "
                           "choose the data with release_version and start_date/end_date")
    if float(timeout_s) <= 0 or int(pool_size) < 0:
        raise HarnessError(f"{TASK}: timeout_s must be > 0 and pool_size >= 0 (got {timeout_s}, {pool_size})")
    files = release_files(release_version)
    start, end = _as_day(start_date, "start_date"), _as_day(end_date, "end_date")
    if start and end and start > end:
        raise HarnessError(f"{TASK}: start_date {start} is after end_date {end}: swap them")
    loaded = [_release_file(path, f, revision) for f in files]
    entries = [(row, digest, day) for f in loaded for row, digest, day in zip(f.rows, f.digests, f.days)]
    window = [e for e in entries if (start is None or e[2] >= start) and (end is None or e[2] <= end)]
    before = [e for e in entries if start is not None and e[2] < start]
    if not window:
        raise HarnessError(f"{TASK}: no problem of {release_version} is dated in {start or '...'} to {end or '...'}: "
                           "widen the window or pick a later release_version")
    carved: list[int] = []
    if before:
        pool, evaluated = before, window
        rule = f"problems dated before {start} (start_date)"
    else:
        k = min(int(pool_size), len(window) // 2)
        carved = sorted(random.Random(pool_seed).sample(range(len(window)), k))
        taken = set(carved)
        pool = [window[i] for i in carved]
        evaluated = [e for i, e in enumerate(window) if i not in taken]
        rule = (f"no problem predates the window: {k} of its {len(window)} problems carved out "
                f"(seed {pool_seed}; carved_rows index the window in file order)")
    # A problem re-released under another id (same statement) must not sit on both sides.
    seen = {e[0]["question_id"] for e in evaluated} | {_text_key(e[0]) for e in evaluated}
    kept = [e for e in pool if e[0]["question_id"] not in seen and _text_key(e[0]) not in seen]
    source = f"{path}@{revision or 'main'}:{release_version}"
    info = LCBPoolInfo(
        eval_source=source, pool_source=source,
        carved=bool(carved), carve_seed=pool_seed if carved else None, carved_rows=carved,
        dropped_duplicates=len(pool) - len(kept), n_pool=len(kept), n_eval=len(evaluated),
        fingerprints={**{f.name: f.sha256 for f in loaded}, "eval": _selection_hash(evaluated),
                      "pool": _selection_hash(kept)},
        release_version=str(release_version), files=files, revision=revision,
        sources={f.name: f.source for f in loaded}, start_date=start and start.isoformat(),
        end_date=end and end.isoformat(), pool_rule=rule, n_release=len(entries),
        n_after_window=sum(1 for e in entries if end is not None and e[2] > end), timeout_s=float(timeout_s),
        grading=grading)
    return ([_document(e[0], "pool", timeout_s, grading) for e in kept],
            [_document(e[0], "eval", timeout_s, grading) for e in evaluated], info)


def _document(row: dict, split: str, timeout_s: float, grading: str) -> dict:
    doc = {k: v for k, v in row.items() if k != "private_test_cases"}
    doc["private_tests_sha256"] = private_tests_key(row["private_test_cases"])
    return {**doc, "harness_split": split, "grading_timeout_s": float(timeout_s), "grading_mode": grading}


def _as_day(value, what: str) -> date | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise HarnessError(f"{TASK}: {what} {value!r} is not a date: write it as YYYY-MM-DD") from None


def _text_key(row: dict) -> str:
    return " ".join(str(row.get("question_content", "")).lower().split())


def _selection_hash(entries) -> str:
    h = hashlib.sha256()
    for _, digest, _ in entries:
        h.update(digest.encode())
    return h.hexdigest()


def load_task_dataset(**kwargs):
    """lm-eval `custom_dataset` hook: a DatasetDict with `pool` and `eval` splits.

    lm-eval passes the task's `metadata` and `dataset_kwargs` together; keys that are not options
    are ignored here (`pool_info`, which gets the dataset options alone, rejects unknown ones).
    """
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    pool, evaluated, _ = build_splits(**{k: v for k, v in kwargs.items() if k in OPTIONS})
    columns = list(dict.fromkeys(k for row in evaluated + pool for k in row))  # rows may carry extra fields

    def table(rows):
        arrays = {}
        for column in columns:
            values = [row.get(column) for row in rows]
            text = all(v is None or isinstance(v, str) for v in values)
            # large_string: no 2 GB cap on a column (and a column of None stays a string column)
            arrays[column] = pa.array(values, type=pa.large_string() if text else None)
        return datasets.Dataset(InMemoryTable(pa.table(arrays)))

    return datasets.DatasetDict({"pool": table(pool), "eval": table(evaluated)})


def pool_info(**dataset_kwargs) -> LCBPoolInfo:
    unknown = sorted(set(dataset_kwargs) - set(OPTIONS))
    if unknown:
        raise HarnessError(f"{TASK}: unknown dataset option(s) {', '.join(unknown)}: use {', '.join(OPTIONS)}")
    return build_splits(**dataset_kwargs)[2]


load_task_dataset.pool_info = pool_info  # how harness/tasks.py asks a custom loader for its record
