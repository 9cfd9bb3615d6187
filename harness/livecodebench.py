"""LiveCodeBench code generation (`livecodebench/code_generation_lite`): data, private tests, grading.

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

Rows keep the Hub's fields (`FIELDS`), with the test lists and metadata as JSON strings. The private
tests may also be base64 of zlib of a pickled JSON string. They are unpickled with every global
refused and with a cap on the inflated size, so a crafted row can neither run code nor exhaust memory
by inflating. Each file is validated once, whole, when it is first read.

The documents given to lm-eval are those rows with these changes. `private_test_cases`, several MB per
row (GBs per release), is replaced by `private_tests_sha256`, the key under which this process keeps
it, so that documents stay small in Arrow, in every logged sample and in every hash of a document.
`harness_split` ("pool" or "eval"), `grading_timeout_s` and `grading_mode` are added. Integers in the
test data may have up to 50,000 digits, lcb_runner's limit (Python's own stops at 4,300); a row with a
longer one loads, and no sample passes it, as in lcb_runner.

Grading. The public tests run first, then the private ones; grading stops at the first failure and a
sample passes only if every test passes. Every program runs in the sandbox (harness/sandbox) with the
names lcb_runner imports before a solution (`List`, `defaultdict`, `sqrt`, ...), with Python's
int<->str limit raised to 50,000 digits, and with a time limit per test (6 s by default, lcb_runner's)
counted in CPU seconds of the solution itself, so that a busy machine cannot fail a solution: the
interpreter's start-up is outside it (in lcb_runner mode the pre-imports too; in fair mode they are part
of the program, about 0.05 s). A solution that waits without computing (sleep, a blocked read) is
stopped by a wall clock of 5 x the limit + 5 s. Two modes (`grading`):
  - lcb_runner (default): lcb_runner's `testing_util.run_test`, quirks included, run by
    harness/lcb_judge.py in one sandboxed process per sample (its docstring lists the rules). Verdicts
    equal lcb_runner's on the same programs (tests/test_lcb_parity.py pins 78 of them), except where
    time is concerned: lcb_runner's per-test limit is wall-clock time (its alarm). Its whole-sample
    limit, (timeout + 1) x tests + 5 s, is CPU time here too. The grade carries `lcb_results`,
    lcb_runner's per-test list for the sample. The code is taken from an answer as lcb_runner takes it
    from a chat model's (`extract_code_lcb`).
  - fair: each test in a fresh process; a stdin program runs as a real script (so `global`, `for line
    in sys.stdin`, `sys.stdout.buffer` and `open(0)` work), a functional solution is a fresh
    Solution() per test whose return value travels as JSON (nested tuples and int dict keys compare
    leniently, numpy values by their values), prints are ignored and exit() ends the program quietly.
    The output rule is lcb_runner's: output and expected output are each stripped, split into lines
    and stripped line by line; the line counts must agree, and two lines match when they are equal or
    both are whitespace-separated decimals of equal value ("2.50" == "2.5", "1e2" == "100", exact).
    The code is the answer's last fenced python block (harness.codeeval.extract_code).
Statuses, with lcb_runner's error codes: passed; wrong_answer (-2); timeout (-3); runtime_error (-4);
compile_error (-4); memory_limit and the sandbox's other limits (output_limit, process_limit,
file_size_limit, network_blocked, signal: -4 in fair mode); in lcb_runner mode a process that dies
without a verdict (os._exit, exit() inside a method, its whole-sample limit) is lcb_runner's -5 with
the per-test list [-2], as lcb_runner records it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import pickle
import random
import re
import secrets
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from harness.errors import HarnessError
from harness.pools import PoolInfo
from harness.settings import data_dir, hub_offline

TASK = "livecodebench"
HUB_REPO = "livecodebench/code_generation_lite"
# The Hub's main branch as of its last jsonl release (v6). Pinned so that a later conversion of the
# repository (to parquet, say) cannot change the data under a fixed config.
HUB_REVISION = "0fe84c3912ea0c4d4a78037083943e8f0c4dd505"
RELEASE_FILES = ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl")
FIELDS = ("question_title", "question_content", "platform", "question_id", "contest_id", "contest_date",
          "starter_code", "difficulty", "public_test_cases", "private_test_cases", "metadata")
DEFAULT_TIMEOUT_S = 6.0  # lcb_runner's --timeout: seconds per test
GRADING_MODES = ("lcb_runner", "fair")
DEFAULT_GRADING = "lcb_runner"
INT_MAX_STR_DIGITS = 50_000  # lcb_runner raises Python's 4,300-digit int<->str limit to this in its grader
MEMORY_MB = 4096  # LCB sets no memory limit; this only stops runaway programs
MAX_PRIVATE_TESTS_BYTES = 512 * 2**20  # inflated size cap: a zlib bomb stops here, real rows are far smaller


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
_PRIVATE_TESTS: dict[str, str] = {}  # sha256 of a row's private_test_cases -> that (encoded) string


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
        said = "Hub disabled" if hub_offline() else f"Hub said: {_one_line(exc)[:200]}"
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
                raise _malformed(where, source, f"not a JSON object ({_one_line(exc)[:120]})") from None
            if not isinstance(row, dict):
                raise _malformed(where, source, "not a JSON object")
            problem = parse_problem(row, where, source)
            _PRIVATE_TESTS[_sha256(row["private_test_cases"])] = row["private_test_cases"]
            rows.append(row)
            digests.append(hashlib.sha256(line).hexdigest())
            days.append(problem.contest_date.date())
    return _ReleaseFile(name, source, whole.hexdigest(), rows, digests, days)


def _malformed(where: str, source: str, problem: str) -> HarnessError:
    origin = f" ({source})" if source else ""
    return HarnessError(f"{TASK}: malformed row in {where}{origin}: {problem}; "
                        "re-download that file or fix or drop the row")


def _one_line(value) -> str:
    return " ".join(str(value).split())


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------ problems and private tests

@dataclass(frozen=True)
class Test:
    input: str
    output: str
    private: bool


@dataclass(frozen=True)
class Problem:
    question_id: str
    contest_date: datetime
    func_name: str | None  # None: a stdin/stdout program
    tests: tuple[Test, ...]  # public tests first, then private ones, as LCB runs them


def parse_problem(row: dict, where: str = "", source: str = "") -> Problem:
    """A Hub row, or a document made from one, as a gradable problem.

    A row that cannot be graded raises a one-line HarnessError.
    """
    where = where or f"question {row.get('question_id', '?')}"
    if "private_test_cases" not in row and "private_tests_sha256" in row:
        encoded = _PRIVATE_TESTS.get(row["private_tests_sha256"])
        if encoded is None:
            raise HarnessError(f"{TASK}: the private tests of {where} are not loaded in this process: "
                               "load the task's data (harness.livecodebench.build_splits) before grading")
        row = {**row, "private_test_cases": encoded}
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise _malformed(where, source, f"missing field(s) {', '.join(missing)}")
    try:
        contest_date = datetime.fromisoformat(str(row["contest_date"]))
    except ValueError:
        bad = str(row["contest_date"])[:40]
        raise _malformed(where, source, f"contest_date {bad!r} is not an ISO date") from None
    try:
        public = json.loads(row["public_test_cases"])
    except (TypeError, ValueError) as exc:
        raise _malformed(where, source, f"public_test_cases is not JSON ({_one_line(exc)[:120]})") from None
    try:
        private = decode_private_tests(row["private_test_cases"])
    except ValueError as exc:
        raise _malformed(where, source, f"private_test_cases cannot be decoded: {_one_line(exc)}") from None
    try:
        metadata = json.loads(row["metadata"])
    except (TypeError, ValueError):
        metadata = None
    if not isinstance(metadata, dict):
        raise _malformed(where, source, "metadata is not a JSON object")
    if not isinstance(public, list):
        raise _malformed(where, source, "public_test_cases is not a JSON list")
    tests, kinds = [], set()
    for private_part, cases in ((False, public), (True, private)):
        for i, case in enumerate(cases):
            label = f"{'private' if private_part else 'public'} test {i + 1}"
            if not (isinstance(case, dict) and isinstance(case.get("input"), str)
                    and isinstance(case.get("output"), str)):
                raise _malformed(where, source, f"{label} lacks string input/output")
            if case.get("testtype") not in ("stdin", "functional"):
                raise _malformed(where, source, f"{label} has unknown testtype {str(case.get('testtype'))[:40]!r} "
                                                "(expected stdin or functional)")
            kinds.add(case["testtype"])
            tests.append(Test(case["input"], case["output"], private_part))
    if not tests:
        raise _malformed(where, source, "no public or private tests")
    if len(kinds) > 1:
        raise _malformed(where, source, "mixes stdin and functional tests")
    func_name = None
    if kinds == {"functional"}:
        func_name = metadata.get("func_name")
        if not isinstance(func_name, str) or not func_name.isidentifier():
            raise _malformed(where, source, "functional tests but metadata has no valid func_name")
        for i, test in enumerate(tests):
            try:
                _call_args(test.input), _lcb_json(test.output)
            except TooManyDigits:
                pass  # well-formed; lcb_runner fails every sample on it, and so does grade()
            except ValueError:
                raise _malformed(where, source, f"test {i + 1}: an input line or the output is not JSON") from None
    return Problem(str(row["question_id"]), contest_date, func_name, tuple(tests))


class _Refused(pickle.UnpicklingError):
    pass


class _PlainDataUnpickler(pickle.Unpickler):
    """Loads plain data only. Every global (class, function) is refused, and everything in pickle
    that constructs objects or calls functions needs one, so a payload cannot run code."""

    def find_class(self, module, name):
        raise _Refused(f"refused to load global {module}.{name} (private tests are plain data)")


def decode_private_tests(text, max_bytes: int | None = None) -> list:
    """The private test list: plain JSON, or base64 -> zlib -> pickle -> JSON string (raises ValueError).

    The inflated pickle may be at most `max_bytes` (default MAX_PRIVATE_TESTS_BYTES) long.
    """
    if not isinstance(text, str):
        raise ValueError("not a string")
    try:
        value = json.loads(text)  # older rows store the list as plain JSON
    except ValueError:
        value = _unpickle_plain(_inflate(_unbase64(text), max_bytes or MAX_PRIVATE_TESTS_BYTES))
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("the unpickled string is not JSON") from None
    if not isinstance(value, list):
        raise ValueError(f"decodes to {type(value).__name__}, not a list of tests")
    return value


def _unbase64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("neither JSON nor base64") from None


def _inflate(blob: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(blob, max_bytes)
    except zlib.error as exc:
        raise ValueError(f"not zlib data ({exc})") from None
    if not inflater.eof:
        if inflater.unconsumed_tail or len(data) >= max_bytes:
            raise ValueError(f"inflates to more than {max_bytes} bytes (a zlib bomb?); "
                             "raise harness.livecodebench.MAX_PRIVATE_TESTS_BYTES if the row is genuine")
        raise ValueError("truncated zlib stream")
    return data


def _unpickle_plain(blob: bytes):
    try:
        value = _PlainDataUnpickler(io.BytesIO(blob)).load()
    except _Refused as exc:
        raise ValueError(f"unsafe pickle: {exc}") from None
    except Exception as exc:  # truncated or garbage streams raise all sorts of errors
        raise ValueError(f"not a pickle ({type(exc).__name__}: {_one_line(exc)[:80]})") from None
    if isinstance(value, bool) or not isinstance(value, (str, list, dict, int, float)):
        raise ValueError(f"pickle holds a {type(value).__name__}, expected a JSON string")
    return value


def _call_args(text: str) -> list:
    return [_lcb_json(line) for line in text.split("\n")]  # one JSON value per argument, as LCB reads them


class TooManyDigits(ValueError):
    """An integer longer than lcb_runner's 50,000-digit limit."""


def _lcb_json(text: str):
    """JSON as lcb_runner's grader reads it: integers of up to 50,000 digits (Python stops at 4,300).

    The limit is the interpreter's, shared by every thread, so it is not raised here; the rare row
    with a longer integer is read again with a parser of its own for integers.
    """
    try:
        return json.loads(text)
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise
    return json.loads(text, parse_int=_lcb_int)


def _lcb_int(literal: str) -> int:
    digits = literal.lstrip("-")
    if len(digits) > INT_MAX_STR_DIGITS:
        raise TooManyDigits(f"an integer of {len(digits):,} digits is over lcb_runner's limit of "
                            f"{INT_MAX_STR_DIGITS:,}")
    value = 0
    for start in range(0, len(digits), 4000):  # pieces within Python's default limit
        piece = digits[start: start + 4000]
        value = value * 10 ** len(piece) + int(piece)
    return -value if literal.startswith("-") else value


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
    grading: str = ""  # lcb_runner or fair (see the module docstring)


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
    doc["private_tests_sha256"] = _sha256(row["private_test_cases"])
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


# ------------------------------------------------------------------------------ grading

# The names lcb_runner imports before it runs a solution, in its order. Models lean on them (`List` in
# LeetCode signatures, `defaultdict`, `sqrt` with no import), and LCB counts such code correct.
_STAR_IMPORTS = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                 "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
PRELUDE = ("".join(f"from {m} import *\n" for m in _STAR_IMPORTS)
           + "import " + ", ".join(m for m in _STAR_IMPORTS if m not in ("builtins", "typing"))
           + "\nsys.setrecursionlimit(50000)\n")
_RESULT = "@@harness-lcb-result@@"  # the fair functional driver's answer line
_JUDGE = Path(__file__).with_name("lcb_judge.py")  # lcb_runner's rules, run in the sandbox once per sample
_JUDGE_MARK = "@@lcb-judge@@"
LCB_ERROR_CODES = {"passed": None, "wrong_answer": -2, "timeout": -3}  # everything else is -4
_NOT_LOADED = -5  # lcb_runner's code when its test process dies without a result ("TestRunnerError")


def check_grading(grading) -> str:
    if grading not in GRADING_MODES:
        raise HarnessError(f"{TASK}: unknown grading mode {grading!r}: set task.grading=lcb_runner (lcb_runner's "
                           "verdicts, quirks included) or task.grading=fair (each test in a fresh process)")
    return grading


def extract_code_lcb(text: str) -> str:
    """The code lcb_runner takes from a chat model's answer: the lines between the last two lines that hold
    a ``` fence, or nothing when there are fewer than two."""
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    return "\n".join(lines[fences[-2] + 1: fences[-1]]) if len(fences) >= 2 else ""


def grade(problem: Problem, code: str, timeout_s: float = DEFAULT_TIMEOUT_S, grading: str = DEFAULT_GRADING) -> dict:
    """Run one solution against the tests of `problem`, public then private, stopping at the first failure.

    Returns {passed, status, reason, test_index (0-based, public then private; None if no test failed),
    n_tests, lcb_error_code, wall_s, cpu_s (the solution's CPU seconds), grading}; `lcb_runner` grading
    adds lcb_results, lcb_runner's per-test list for the sample.
    """
    # Even parsing untrusted code happens in the sandbox: a crafted source can make the compiler
    # itself burn memory or time, so the parent never compiles it.
    if check_grading(grading) == "lcb_runner":
        return _grade_lcb_runner(problem, code, float(timeout_s))
    return _grade_fair(problem, code, float(timeout_s))


def _grade(status: str, reason: str, test_index: int | None, n_tests: int, wall_s: float, cpu_s: float | None,
           grading: str, **extra) -> dict:
    return {"passed": status == "passed", "status": status, "reason": reason, "test_index": test_index,
            "n_tests": n_tests, "lcb_error_code": extra.pop("lcb_error_code", LCB_ERROR_CODES.get(status, -4)),
            "wall_s": round(wall_s, 3), "cpu_s": None if cpu_s is None else round(cpu_s, 3), "grading": grading,
            **extra}


def _where(problem: Problem, index: int) -> str:
    kind = "private" if problem.tests[index].private else "public"
    return f"test {index + 1} of {len(problem.tests)} ({kind})"


def _sandbox_failed(result) -> None:
    if result.status == "sandbox_error":  # the machinery failed, not the solution: never score it
        raise HarnessError(f"{TASK}: the sandbox could not run a test ({result.reason}): "
                           "check harness/sandbox on this machine")


# ------------------------------------------------------------------------------ grading=lcb_runner

def _grade_lcb_runner(problem: Problem, code: str, timeout_s: float) -> dict:
    """One sandboxed process runs harness/lcb_judge.py on every test, with lcb_runner's rules."""
    from harness.sandbox import cpu_time_limits, run_python

    n = len(problem.tests)
    token = secrets.token_hex(16)  # marks the judge's own lines; the solution is never given it
    job = {"code": code, "fn_name": problem.func_name, "prelude": PRELUDE, "timeout_s": timeout_s,
           "backstop_s": cpu_time_limits(timeout_s).wall_s, "token": token,
           "inputs": [t.input for t in problem.tests], "outputs": [t.output for t in problem.tests]}
    # lcb_runner's limit for a whole sample, (timeout + 1) x tests + 5 s, here in CPU seconds.
    limits = cpu_time_limits((timeout_s + 1) * n + 5, memory_mb=MEMORY_MB, output_kb=256)
    result = run_python(_JUDGE.read_text(), stdin=json.dumps(job), limits=limits)
    _sandbox_failed(result)
    messages = _judge_messages(result.stdout, token)
    final = next((m["final"] for m in reversed(messages) if "final" in m), None)
    if final is None:
        return _judge_died(problem, result, messages, timeout_s, limits.wall_s)
    return _judge_verdict(problem, final, result.wall_s, timeout_s)


def _judge_verdict(problem: Problem, final: dict, wall_s: float, timeout_s: float) -> dict:
    """The grade of a sample the judge saw to the end (its `final` report)."""
    n, error_code, results = len(problem.tests), final["error_code"], final["results"]
    if error_code is None and all(r is True for r in results):
        return _grade("passed", f"passed all {n} tests", None, n, wall_s, final["cpu_s"], "lcb_runner",
                      lcb_results=results)
    error, index = final["error"], final["test"]
    if error_code == -2:
        status = "wrong_answer"
    elif error_code == -3:
        status, error = "timeout", f"over the {timeout_s:g} s limit ({error})"
    elif final["phase"] == "compile" and re.match(r"(SyntaxError|IndentationError|TabError)\b", error):
        status = "compile_error"
    else:
        status = "memory_limit" if error.startswith("MemoryError") else "runtime_error"
    where = _where(problem, index) if index is not None else f"before the tests ({final['phase']})"
    return _grade(status, f"{where}: {error}", index or 0, n, wall_s, final["cpu_s"], "lcb_runner",
                  lcb_error_code=error_code, lcb_results=results)


def _judge_died(problem: Problem, result, messages: list[dict], timeout_s: float, wall_limit_s: float) -> dict:
    """The grade of a sample whose process ended before the judge's verdict (os._exit, exit() in a method,
    a limit): lcb_runner records that as error code -5 with the result list [-2]."""
    started = [m["test"] for m in messages if "test" in m]
    died = next((m["died"] for m in messages if "died" in m), None)
    status = {"cpu_limit": "timeout", "ok": "runtime_error", "error": "runtime_error"}.get(result.status,
                                                                                        result.status)
    how = {"cpu_limit": f"over the {timeout_s:g} s limit, stuck in one call: stopped after "
                        f"{result.cpu_s or 0:.1f} s of CPU, without a verdict",
           "timeout": f"over the {timeout_s:g} s limit: stopped by the {wall_limit_s:g} s wall clock, "
                      "without a verdict",
           }.get(result.status) or f"the process ended without a verdict ({died or result.reason})"
    where = _where(problem, started[-1]) if started else "before the tests"
    return _grade(status, f"{where}: {how}", started[-1] if started else 0, len(problem.tests), result.wall_s,
                  result.cpu_s, "lcb_runner", lcb_error_code=_NOT_LOADED, lcb_results=[-2])


def _judge_messages(stdout: str, token: str) -> list[dict]:
    """The judge's reports: only lines carrying this run's token count (a solution's own prints do not)."""
    mark, messages = _JUDGE_MARK + token + " ", []
    for line in _text(stdout).split("\n"):
        if line.startswith(mark):
            try:
                messages.append(json.loads(line[len(mark):]))
            except ValueError:
                continue  # cut off by the output cap or a dying process
    return messages


# ------------------------------------------------------------------------------ grading=fair

def stdin_program(code: str) -> str:
    """The solution run as a script after LCB's pre-imports; how it exits does not matter (as in LCB)."""
    return ("import sys\n"
            f"sys.set_int_max_str_digits({INT_MAX_STR_DIGITS})\n"
            "ns = {'__name__': '__main__'}\n"
            f"exec({PRELUDE!r}, ns)\n"
            "try:\n"
            f"    exec(compile({code!r}, '<solution>', 'exec'), ns)\n"
            "except SystemExit:\n"
            "    pass\n")


def functional_program(code: str, func_name: str) -> str:
    """Reads the arguments (one JSON value a line) from stdin, calls the method, writes the JSON result.

    The solution's own prints are dropped, as LCB ignores them: only the return value is its answer.
    """
    return ("import json, sys\n"
            f"sys.set_int_max_str_digits({INT_MAX_STR_DIGITS})\n"
            "args = [json.loads(line) for line in sys.stdin.read().split('\\n')]\n"
            "class Dropped:\n"
            "    def write(self, text):\n"
            "        return len(text)\n"
            "    def flush(self):\n"
            "        pass\n"
            "out, sys.stdout = sys.stdout, Dropped()\n"
            "ns = {'__name__': 'solution'}\n"
            f"exec({PRELUDE!r}, ns)\n"
            f"exec(compile({code!r}, '<solution>', 'exec'), ns)\n"
            "owner = ns['Solution']() if isinstance(ns.get('Solution'), type) else None\n"
            f"method = getattr(owner, {func_name!r}, None) if owner is not None else ns.get({func_name!r})\n"
            "if not callable(method):\n"
            f"    raise SystemExit('no method Solution.{func_name} (nor a function {func_name}) is defined')\n"
            "result = method(*args)\n"
            "def plain(value):  # numpy scalars and arrays: compared by their values\n"
            "    if hasattr(value, 'tolist'):\n"
            "        return value.tolist()\n"
            "    raise TypeError(f'the return value holds a {type(value).__name__}, which is not JSON data')\n"
            f"out.write({_RESULT!r} + json.dumps(result, default=plain) + '\\n')\n")


def compare_stdout(got: str, expected: str) -> str | None:
    """None when `got` matches `expected` by LCB's rule (module docstring), else why not (one line)."""
    got_lines = [line.strip() for line in got.strip().split("\n")]
    want_lines = [line.strip() for line in expected.strip().split("\n")]
    if len(got_lines) != len(want_lines):
        return f"expected {len(want_lines)} output line(s), got {len(got_lines)}"
    for i, (g, w) in enumerate(zip(got_lines, want_lines), 1):
        if g != w and not _same_decimals(g, w):
            return f"line {i}: expected {_short(w)}, got {_short(g)}"
    return None


def _same_decimals(a: str, b: str) -> bool:
    try:
        return [Decimal(t) for t in a.split()] == [Decimal(t) for t in b.split()]
    except InvalidOperation:  # not numbers (or a signalling NaN): no match
        return False


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 20] + "..." + text[-17:]


def _grade_fair(problem: Problem, code: str, timeout_s: float) -> dict:
    """Each test in a fresh sandboxed process; return values compared as JSON."""
    n = len(problem.tests)
    program = functional_program(code, problem.func_name) if problem.func_name else stdin_program(code)
    wall, cpu = 0.0, 0.0
    for i, test in enumerate(problem.tests):
        status, why, seconds, cpu_s = _run_test(problem, program, test, timeout_s)
        wall, cpu = wall + seconds, cpu + (cpu_s or 0.0)
        if status != "passed":
            return _grade(status, f"{_where(problem, i)}: {why}", i, n, wall, cpu, "fair")
    return _grade("passed", f"passed all {n} tests", None, n, wall, cpu, "fair")


def _run_test(problem: Problem, program: str, test: Test, timeout_s: float) -> tuple[str, str, float, float | None]:
    from harness.sandbox import cpu_time_limits, run_python

    # The output cap leaves room for twice the expected output and for chatty debugging on stderr.
    limits = cpu_time_limits(timeout_s, memory_mb=MEMORY_MB,
                             output_kb=max(8192, 2 * len(test.output.encode()) // 1024 + 64))
    result = run_python(program, stdin=test.input, limits=limits)
    seconds = float(result.wall_s or 0.0)
    _sandbox_failed(result)
    if result.status in ("timeout", "cpu_limit"):
        how = (f"{result.cpu_s:.2f} s of CPU" if result.status == "cpu_limit"
               else f"stopped by the {limits.wall_s:g} s wall-clock backstop")
        return "timeout", f"over the {timeout_s:g} s limit ({how})", seconds, result.cpu_s
    if result.status == "error":  # the sandbox's reason is the exception line of the traceback
        if re.match(r"(SyntaxError|IndentationError|TabError)\b", result.reason or ""):
            return "compile_error", result.reason, seconds, result.cpu_s
        return "runtime_error", result.reason, seconds, result.cpu_s
    if result.status != "ok":
        return result.status, result.reason, seconds, result.cpu_s
    stdout = _text(result.stdout)
    if problem.func_name is None:
        why = compare_stdout(stdout, test.output)
        return ("passed", "", seconds, result.cpu_s) if why is None else ("wrong_answer", why, seconds, result.cpu_s)
    answers = [line for line in stdout.split("\n") if line.startswith(_RESULT)]
    try:
        expected = _lcb_json(test.output)
    except TooManyDigits as exc:
        return "runtime_error", f"the expected output cannot be read: {exc}", seconds, result.cpu_s
    try:
        got = _lcb_json(answers[-1][len(_RESULT):])
    except (IndexError, ValueError):  # it left before the driver could answer (os._exit, say)
        return "runtime_error", "the program ended without returning a value", seconds, result.cpu_s
    if got == expected:
        return "passed", "", seconds, result.cpu_s
    return ("wrong_answer", f"expected {_short(test.output.strip())}, got {_short(answers[-1][len(_RESULT):])}",
            seconds, result.cpu_s)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value or "")


def grade_samples(doc, codes: list[str], timeout_s: float | None = None, workers: int | None = None,
                  grading: str | None = None) -> list[dict]:
    """Grade every sample of one problem (a Hub row, a task document or a Problem), in input order.

    The time limit and the grading mode default to the document's (`grading_timeout_s`, `grading_mode`).
    Samples run in parallel; the tests of one sample run one after another (first failure stops them).
    """
    problem = doc if isinstance(doc, Problem) else parse_problem(doc)
    document = doc if isinstance(doc, dict) else {}
    timeout_s = timeout_s or document.get("grading_timeout_s") or DEFAULT_TIMEOUT_S
    grading = check_grading(grading or document.get("grading_mode") or DEFAULT_GRADING)
    if not codes:
        return []
    width = max(1, min(len(codes), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=width) as pool:  # each run is its own process: threads suffice
        return list(pool.map(lambda code: grade(problem, code, timeout_s, grading), codes))
