"""LiveCodeBench problems: a Hub row (or a document made from one) parsed and checked into tests to run.

Rows keep the Hub's fields (`FIELDS`), with the test lists and metadata as JSON strings. The private
tests may also be base64 of zlib of a pickled JSON string. They are unpickled with every global
refused and with a cap on the inflated size, so a crafted row can neither run code nor exhaust memory
by inflating. Documents carry `private_tests_sha256` instead of the tests themselves (see data.py);
this process keeps the tests under that key. Integers in the test data may have up to 50,000 digits,
lcb_runner's limit (Python's own stops at 4,300); a row with a longer one loads, and no sample passes
it, as in lcb_runner.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import pickle
import zlib
from dataclasses import dataclass
from datetime import datetime

from harness.errors import HarnessError

TASK = "livecodebench"
FIELDS = ("question_title", "question_content", "platform", "question_id", "contest_id", "contest_date",
          "starter_code", "difficulty", "public_test_cases", "private_test_cases", "metadata")
INT_MAX_STR_DIGITS = 50_000  # lcb_runner raises Python's 4,300-digit int<->str limit to this in its grader
MAX_PRIVATE_TESTS_BYTES = 512 * 2**20  # inflated size cap: a zlib bomb stops here, real rows are far smaller

_PRIVATE_TESTS: dict[str, str] = {}  # sha256 of a row's private_test_cases -> that (encoded) string


def private_tests_key(encoded: str) -> str:
    """The key a document carries instead of its row's private tests."""
    return hashlib.sha256(encoded.encode()).hexdigest()


def keep_private_tests(encoded: str) -> None:
    """Keeps a row's (encoded) private tests in this process, so that its document can be graded."""
    _PRIVATE_TESTS[private_tests_key(encoded)] = encoded


def malformed(where: str, source: str, problem: str) -> HarnessError:
    origin = f" ({source})" if source else ""
    return HarnessError(f"{TASK}: malformed row in {where}{origin}: {problem}; "
                        "re-download that file or fix or drop the row")


def one_line(value) -> str:
    return " ".join(str(value).split())


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
        raise malformed(where, source, f"missing field(s) {', '.join(missing)}")
    try:
        contest_date = datetime.fromisoformat(str(row["contest_date"]))
    except ValueError:
        bad = str(row["contest_date"])[:40]
        raise malformed(where, source, f"contest_date {bad!r} is not an ISO date") from None
    try:
        public = json.loads(row["public_test_cases"])
    except (TypeError, ValueError) as exc:
        raise malformed(where, source, f"public_test_cases is not JSON ({one_line(exc)[:120]})") from None
    try:
        private = decode_private_tests(row["private_test_cases"])
    except ValueError as exc:
        raise malformed(where, source, f"private_test_cases cannot be decoded: {one_line(exc)}") from None
    try:
        metadata = json.loads(row["metadata"])
    except (TypeError, ValueError):
        metadata = None
    if not isinstance(metadata, dict):
        raise malformed(where, source, "metadata is not a JSON object")
    if not isinstance(public, list):
        raise malformed(where, source, "public_test_cases is not a JSON list")
    tests, kinds = [], set()
    for private_part, cases in ((False, public), (True, private)):
        for i, case in enumerate(cases):
            label = f"{'private' if private_part else 'public'} test {i + 1}"
            if not (isinstance(case, dict) and isinstance(case.get("input"), str)
                    and isinstance(case.get("output"), str)):
                raise malformed(where, source, f"{label} lacks string input/output")
            if case.get("testtype") not in ("stdin", "functional"):
                raise malformed(where, source, f"{label} has unknown testtype {str(case.get('testtype'))[:40]!r} "
                                                "(expected stdin or functional)")
            kinds.add(case["testtype"])
            tests.append(Test(case["input"], case["output"], private_part))
    if not tests:
        raise malformed(where, source, "no public or private tests")
    if len(kinds) > 1:
        raise malformed(where, source, "mixes stdin and functional tests")
    func_name = None
    if kinds == {"functional"}:
        func_name = metadata.get("func_name")
        if not isinstance(func_name, str) or not func_name.isidentifier():
            raise malformed(where, source, "functional tests but metadata has no valid func_name")
        for i, test in enumerate(tests):
            try:
                _call_args(test.input), lcb_json(test.output)
            except TooManyDigits:
                pass  # well-formed; lcb_runner fails every sample on it, and so does grade()
            except ValueError:
                raise malformed(where, source, f"test {i + 1}: an input line or the output is not JSON") from None
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
                             "raise harness.livecodebench.problems.MAX_PRIVATE_TESTS_BYTES if the row is genuine")
        raise ValueError("truncated zlib stream")
    return data


def _unpickle_plain(blob: bytes):
    try:
        value = _PlainDataUnpickler(io.BytesIO(blob)).load()
    except _Refused as exc:
        raise ValueError(f"unsafe pickle: {exc}") from None
    except Exception as exc:  # truncated or garbage streams raise all sorts of errors
        raise ValueError(f"not a pickle ({type(exc).__name__}: {one_line(exc)[:80]})") from None
    if isinstance(value, bool) or not isinstance(value, (str, list, dict, int, float)):
        raise ValueError(f"pickle holds a {type(value).__name__}, expected a JSON string")
    return value


def _call_args(text: str) -> list:
    return [lcb_json(line) for line in text.split("\n")]  # one JSON value per argument, as LCB reads them


class TooManyDigits(ValueError):
    """An integer longer than lcb_runner's 50,000-digit limit."""


def lcb_json(text: str):
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

