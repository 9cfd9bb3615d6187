"""LiveCodeBench: releases and windows, malformed rows, the private-test unpickler, the grader, and
the lm-eval hooks, all on the hand-written fixtures in tests/fixtures/livecodebench."""
import base64
import datetime
import decimal
import importlib.util
import json
import os
import pickle
import shutil
import sys
import zlib
from pathlib import Path

import pytest

from harness import livecodebench as lcb
from harness.errors import HarnessError
from harness.settings import TASKS_DIR

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "livecodebench"
SOLUTIONS = json.loads((FIXTURES / "solutions.json").read_text())
TIMEOUT_S = 1.0  # per test; the slow fixtures run for ever, the others in milliseconds


def _fixture_module():
    spec = importlib.util.spec_from_file_location("lcb_make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE_FIXTURES = _fixture_module()
encode_private_tests = MAKE_FIXTURES.encode_private_tests


@pytest.fixture
def fixture_data(monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(FIXTURES))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A writable copy of the fixture mirror; returns its code_generation_lite folder."""
    shutil.copytree(FIXTURES / "livecodebench", tmp_path / "livecodebench")
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "livecodebench" / "code_generation_lite"


def ids(rows):
    return [r["question_id"] for r in rows]


def rows_by_id():
    out = {}
    for file in sorted((FIXTURES / "livecodebench" / "code_generation_lite").glob("*.jsonl")):
        for line in file.read_text().splitlines():
            row = json.loads(line)
            out[row["question_id"]] = row
    return out


def test_committed_fixtures_are_what_make_fixtures_writes():
    folder = FIXTURES / "livecodebench" / "code_generation_lite"
    assert sorted(p.name for p in folder.iterdir()) == sorted(MAKE_FIXTURES.PROBLEMS)
    for name, rows in MAKE_FIXTURES.PROBLEMS.items():
        committed = [json.loads(line) for line in (folder / name).read_text().splitlines()]
        assert len(committed) == len(rows)
        for got, want in zip(committed, rows):  # zlib's bytes may differ between builds: compare decoded
            assert lcb.decode_private_tests(got.pop("private_test_cases")) == \
                lcb.decode_private_tests(want["private_test_cases"])
            assert got == {k: v for k, v in want.items() if k != "private_test_cases"}
    assert SOLUTIONS == MAKE_FIXTURES.SOLUTIONS


# ------------------------------------------------------------------------------ releases and windows

@pytest.mark.parametrize("version, files", [
    ("release_v1", ["test.jsonl"]),
    ("release_v3", ["test.jsonl", "test2.jsonl", "test3.jsonl"]),
    ("release_latest", list(lcb.RELEASE_FILES)),
    ("release_v6", list(lcb.RELEASE_FILES)),
    ("v1", ["test.jsonl"]),
    ("v5", ["test5.jsonl"]),
    ("v2_v4", ["test2.jsonl", "test3.jsonl", "test4.jsonl"]),
])
def test_release_versions_name_hub_files(version, files):
    assert lcb.release_files(version) == files


@pytest.mark.parametrize("version", ["release_v7", "release_v0", "v0", "v3_v2", "v1_v7", "latest", "v6_"])
def test_unknown_release_versions_are_refused(version):
    with pytest.raises(HarnessError, match="release_version"):
        lcb.release_files(version)


@pytest.mark.parametrize("version, n", [("release_v1", 3), ("release_v2", 5), ("release_latest", 9),
                                        ("v2", 2), ("v3_v5", 3), ("v6", 1)])
def test_each_version_loads_its_increments(fixture_data, version, n):
    pool, evaluated, info = lcb.build_splits(release_version=version)
    assert info.n_release == n == len(pool) + len(evaluated)
    assert info.files == lcb.release_files(version) == list(info.sources)
    assert all(s.startswith("local:") for s in info.sources.values())


def test_window_scores_its_problems_and_the_pool_predates_it(fixture_data):
    pool, evaluated, info = lcb.build_splits(release_version="release_v6", start_date="2024-06-01",
                                             end_date="2024-12-31")
    assert ids(evaluated) == ["9003", "1950_B", "9004"]
    assert ids(pool) == ["9001", "abc901_a", "1901_A", "9002", "abc902_b"]
    assert info.n_after_window == 1 and not info.carved and info.carve_seed is None
    start, end = datetime.date(2024, 6, 1), datetime.date(2024, 12, 31)
    day = lambda r: datetime.datetime.fromisoformat(r["contest_date"]).date()  # noqa: E731
    assert all(day(r) < start for r in pool) and all(start <= day(r) <= end for r in evaluated)
    assert {r["harness_split"] for r in pool} == {"pool"} and {r["harness_split"] for r in evaluated} == {"eval"}
    assert info.to_dict()["start_date"] == "2024-06-01" and "before 2024-06-01" in info.pool_rule
    assert (info.n_pool, info.n_eval, info.release_version) == (5, 3, "release_v6")


def test_documents_carry_a_key_to_their_private_tests(fixture_data):
    pool, evaluated, _ = lcb.build_splits(release_version="v2_v3")
    raw = rows_by_id()
    for doc in pool + evaluated:
        assert "private_test_cases" not in doc and doc["grading_timeout_s"] == lcb.DEFAULT_TIMEOUT_S
        assert doc["grading_mode"] == "lcb_runner"
        assert {k: doc[k] for k in lcb.FIELDS if k != "private_test_cases"} == \
            {k: raw[doc["question_id"]][k] for k in lcb.FIELDS if k != "private_test_cases"}
        assert lcb.parse_problem(doc) == lcb.parse_problem(raw[doc["question_id"]])
    with pytest.raises(HarnessError, match="not loaded in this process"):
        lcb.parse_problem({**evaluated[0], "private_tests_sha256": "0" * 64})


def test_window_ends_are_whole_days_included(fixture_data):
    # 9003 is dated 2024-06-22T14:30: a window of that one day holds it.
    _, evaluated, _ = lcb.build_splits(start_date="2024-06-22", end_date=datetime.date(2024, 6, 22))
    assert ids(evaluated) == ["9003"]
    _, evaluated, _ = lcb.build_splits(end_date="2024-04-13")
    assert set(ids(evaluated)) <= {"9001", "abc901_a", "1901_A", "9002"}


def test_without_an_earlier_problem_the_pool_is_carved_with_a_seed(fixture_data):
    pool, evaluated, info = lcb.build_splits(release_version="release_v2")
    again = lcb.build_splits(release_version="release_v2")[2]
    assert info.carved and info.carve_seed == 1234 and info.carved_rows == again.carved_rows
    assert len(pool) == 2 and len(evaluated) == 3  # min(pool_size, half the window)
    assert not set(ids(pool)) & set(ids(evaluated))
    assert set(ids(pool)) | set(ids(evaluated)) == {"9001", "abc901_a", "1901_A", "9002", "abc902_b"}
    assert "carved" in info.pool_rule and "seed 1234" in info.pool_rule
    assert lcb.build_splits(release_version="release_v2", pool_size=0)[0] == []


def test_fingerprints_follow_the_data_and_the_selection(mirror):
    a = lcb.build_splits(release_version="release_v2", start_date="2024-01-01")[2].fingerprints
    b = lcb.build_splits(release_version="release_v2", start_date="2024-01-01")[2].fingerprints
    c = lcb.build_splits(release_version="release_v2", start_date="2024-05-01")[2].fingerprints
    assert a == b and set(a) == {"test.jsonl", "test2.jsonl", "eval", "pool"}
    assert a["test2.jsonl"] == c["test2.jsonl"] and a["eval"] != c["eval"]
    text = (mirror / "test2.jsonl").read_text().replace("Word Lengths", "Word Length")
    (mirror / "test2.jsonl").write_text(text)
    d = lcb.build_splits(release_version="release_v2", start_date="2024-01-01")[2].fingerprints
    assert d["test.jsonl"] == a["test.jsonl"] and d["test2.jsonl"] != a["test2.jsonl"]


@pytest.mark.parametrize("kwargs, message", [
    ({"start_date": "2030-01-01"}, "no problem"),
    ({"start_date": "2024-06-01", "end_date": "2024-01-01"}, "after end_date"),
    ({"start_date": "June 2024"}, "YYYY-MM-DD"),
    ({"name": "release_v6"}, "not used"),
    ({"release_version": "release_v9"}, "release_version"),
    ({"relase_version": "v1"}, "unknown dataset option"),
    ({"grading": "strict"}, "unknown grading mode 'strict': set task.grading=lcb_runner"),
])
def test_bad_options_are_one_line_errors(fixture_data, kwargs, message):
    with pytest.raises(HarnessError, match=message) as err:
        lcb.pool_info(**kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith("livecodebench:")


def test_a_missing_file_offline_names_it_and_the_fix(mirror):
    (mirror / "test2.jsonl").unlink()
    with pytest.raises(HarnessError, match="test2.jsonl") as err:
        lcb.build_splits(release_version="release_v2")
    assert "HARNESS_DATA_DIR" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ malformed rows

def _mutate(row_index):
    def apply(edit):
        def run(lines):
            if edit == "truncate":
                lines[row_index] = lines[row_index][:50]
                return lines
            row = json.loads(lines[row_index])
            edit(row)
            lines[row_index] = json.dumps(row)
            return lines
        return run
    return apply


def _drop(key):
    return lambda row: row.pop(key)


def _set(key, value):
    return lambda row: row.__setitem__(key, value)


def _public_testtype(row):
    tests = json.loads(row["public_test_cases"])
    tests[0]["testtype"] = "interactive"
    row["public_test_cases"] = json.dumps(tests)


@pytest.mark.parametrize("row_index, edit, message", [
    (1, _drop("metadata"), "missing field"),
    (1, "truncate", "not a JSON object"),
    (1, _set("public_test_cases", "[{"), "public_test_cases is not JSON"),
    (1, _set("private_test_cases", "!!! not base64 !!!"), "neither JSON nor base64"),
    (1, _set("private_test_cases", base64.b64encode(b"plain bytes").decode()), "not zlib"),
    (1, _set("private_test_cases", base64.b64encode(zlib.compress(b"junk")).decode()), "not a pickle"),
    (1, _public_testtype, "unknown testtype 'interactive'"),
    (0, _set("metadata", "{}"), "no valid func_name"),
    (0, _set("contest_date", "sometime in 2024"), "not an ISO date"),
])
def test_a_malformed_row_names_task_file_and_row(mirror, row_index, edit, message):
    path = mirror / "test2.jsonl"
    lines = _mutate(row_index)(edit)(path.read_text().splitlines())
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HarnessError, match=message) as err:
        lcb.build_splits(release_version="v2")
    text = str(err.value)
    assert text.startswith("livecodebench: malformed row in test2.jsonl, row ") and "\n" not in text
    assert f"row {row_index + 1} " in text and "re-download" in text


def _with_digits(digits: int):
    """Edit: the first public test of a functional row expects an integer of `digits` digits."""
    def edit(row):
        tests = json.loads(row["public_test_cases"])
        tests[0]["output"] = "7" * digits
        row["public_test_cases"] = json.dumps(tests)
    return edit


@pytest.mark.parametrize("digits", [5000, 60_000])
def test_a_row_with_a_huge_integer_loads_and_fails_only_as_lcb_runner_does(mirror, digits):
    # Python refuses int<->str conversions over 4,300 digits; lcb_runner raises that to 50,000. A longer
    # integer does not stop the release loading: no sample can pass it, as in lcb_runner.
    path = mirror / "test2.jsonl"
    path.write_text("\n".join(_mutate(0)(_with_digits(digits))(path.read_text().splitlines())) + "\n")
    pool, evaluated, _ = lcb.build_splits(release_version="v2")
    problem = lcb.parse_problem(next(d for d in pool + evaluated if d["question_id"] == "9002"))
    code = "class Solution:\n    def countPairs(self, nums, target):\n        return int('7' * %d)\n" % digits
    for grading in lcb.GRADING_MODES:
        grade = lcb.grade(problem, code, TIMEOUT_S, grading)
        if digits <= lcb.INT_MAX_STR_DIGITS:  # the first test now passes; the second still expects 1 pair
            assert (grade["status"], grade["test_index"]) == ("wrong_answer", 1), grade
        else:
            assert (grade["status"], grade["lcb_error_code"], grade["test_index"]) == ("runtime_error", -4, 0), grade


# ------------------------------------------------------------------------------ private tests and the unpickler

def _pickled(value) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(value))).decode()


def test_private_tests_decode_from_the_hub_encoding_and_plain_json():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    assert lcb.decode_private_tests(encode_private_tests(tests)) == tests
    assert lcb.decode_private_tests(json.dumps(tests)) == tests
    assert lcb.decode_private_tests(_pickled(tests)) == tests  # an already-decoded list is plain data too


class _Mkdir:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


class _Shell:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload", [_Mkdir, _Shell])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, payload):
    target = tmp_path / "pwned"
    with pytest.raises(ValueError, match="refused to load global"):
        lcb.decode_private_tests(_pickled(payload(str(target))))
    assert not target.exists()


def test_a_malicious_row_is_a_harness_error_and_never_runs(mirror, tmp_path):
    target = tmp_path / "pwned"
    path = mirror / "test2.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    row["private_test_cases"] = _pickled(_Shell(str(target)))
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HarnessError, match="row 2 .*refused to load global"):
        lcb.build_splits(release_version="v2")
    assert not target.exists()


def test_a_zlib_bomb_is_cut_off():
    bomb = base64.b64encode(zlib.compress(b"\0" * (4 * 2**20), 9)).decode()
    assert len(bomb) < 2**14  # a few KB that would inflate to 4 MB
    with pytest.raises(ValueError, match="zlib bomb"):
        lcb.decode_private_tests(bomb, max_bytes=2**20)


@pytest.mark.parametrize("value, message", [
    ({1, 2}, "pickle holds a set"), (b"bytes", "pickle holds a bytes"), (None, "pickle holds a NoneType"),
    (True, "pickle holds a bool"), ("not json", "not JSON"), ('{"a": 1}', "not a list of tests"),
])
def test_only_a_json_string_or_plain_list_is_accepted(value, message):
    with pytest.raises(ValueError, match=message):
        lcb.decode_private_tests(_pickled(value))


# ------------------------------------------------------------------------------ the stdout rule

@pytest.mark.parametrize("got, expected, same", [
    ("2.250\n", "2.25\n", True), ("15.000", "15", True), ("1e2", "100", True), ("-0", "0", True),
    ("1  2 3 ", "1 2 3", True), ("3\n", "3\n\n\n", True), ("YES\r\nNO\r\n", "YES\nNO\n", True),
    ("2.2500001", "2.25", False), ("YES", "yes", False), ("a  b", "a b", False),
    ("1\n2", "1", False), ("1 2", "1 2 3", False), ("NaN", "nan", False), ("sNaN", "1", False),
    ("", "", True), ("", "0", False),
])
def test_stdout_matches_line_by_line_with_exact_decimals(got, expected, same):
    from harness.livecodebench import lcb_judge

    why = lcb.compare_stdout(got, expected)
    assert (why is None) == same, why
    if not same:
        assert "\n" not in why
    if got == "sNaN":  # lcb_runner's comparison raises on a signalling NaN (a -4 for the whole sample)
        with pytest.raises(decimal.InvalidOperation):
            lcb_judge.compare_output(got, expected)
    else:  # the judge of grading=lcb_runner applies the same rule
        assert (lcb_judge.compare_output(got, expected) is None) == same


def test_code_is_taken_from_an_answer_as_lcb_runner_takes_it():
    assert lcb.extract_code_lcb("Here:\n```python\nx = 1\n```\nThen:\n```python\ny = 2\n```\nDone.") == "y = 2"
    assert lcb.extract_code_lcb("```python\nunterminated = True") == ""  # fewer than two fence lines
    assert lcb.extract_code_lcb("print(1)") == ""
    assert lcb.extract_code_lcb("text ```python\nz = 3\n``` text") == "z = 3"  # fences anywhere in a line


# ------------------------------------------------------------------------------ grading in the sandbox

needs_sandbox = pytest.mark.skipif(not (Path(lcb.__file__).parents[1] / "sandbox" / "__init__.py").exists(),
                                   reason="harness/sandbox is not in this checkout")


def _problem(qid):
    return lcb.parse_problem(rows_by_id()[qid])


EXPECTED = {"correct": "passed", "tuple": "passed", "wrong": "wrong_answer", "public_only": "wrong_answer",
            "slow": "timeout", "crash": "runtime_error"}


@pytest.fixture(scope="module")
def fixture_grades():
    """Every fixture solution graded once in each mode, all at a time (the slow ones wait for their limits)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(qid, kind, grading) for qid in SOLUTIONS for kind in SOLUTIONS[qid] for grading in lcb.GRADING_MODES]
    with ThreadPoolExecutor(max_workers=12) as pool:
        grades = pool.map(lambda job: lcb.grade(_problem(job[0]), SOLUTIONS[job[0]][job[1]], TIMEOUT_S, job[2]),
                          jobs)
        return dict(zip(jobs, grades))


@needs_sandbox
@pytest.mark.parametrize("grading", lcb.GRADING_MODES)
@pytest.mark.parametrize("qid", list(SOLUTIONS))
def test_fixture_solutions_grade_as_intended(qid, grading, fixture_grades):
    problem = _problem(qid)
    n_public = sum(not t.private for t in problem.tests)
    for kind in SOLUTIONS[qid]:
        grade = fixture_grades[qid, kind, grading]
        assert grade["status"] == EXPECTED[kind], (kind, grade)
        assert grade["passed"] == (EXPECTED[kind] == "passed") and grade["grading"] == grading
        assert grade["n_tests"] == len(problem.tests) and "\n" not in grade["reason"]
        code = {"passed": None, "wrong_answer": -2, "timeout": -3}.get(grade["status"], -4)
        if grading == "lcb_runner" and kind == "slow" and grade["lcb_error_code"] == -5:
            code = -5  # stuck in one C call (1950_B's sum(range(n))): lcb_runner's whole-sample limit ends it
        assert grade["lcb_error_code"] == code
        if kind == "wrong":  # fails on a public test
            assert grade["test_index"] < n_public and "(public)" in grade["reason"]
        if kind == "public_only":  # right on every public test, caught by a private one
            assert grade["test_index"] >= n_public and "(private)" in grade["reason"]
        if kind == "slow":
            assert f"over the {TIMEOUT_S:g} s limit" in grade["reason"]
        if grade["passed"]:
            assert grade["test_index"] is None and grade["reason"] == f"passed all {len(problem.tests)} tests"
            assert 0 <= grade["cpu_s"] < TIMEOUT_S
        if grading == "lcb_runner" and code != -5:  # lcb_runner's per-test list: True per test passed, then the code
            passed = [True] * (grade["test_index"] if grade["test_index"] is not None else len(problem.tests))
            failure = [] if grade["passed"] else [False if grade["status"] == "wrong_answer" and problem.func_name
                                                  else grade["lcb_error_code"]]
            assert grade["lcb_results"] == passed + failure
        elif grading == "lcb_runner":
            assert grade["lcb_results"] == [-2]  # how lcb_runner records a process that died


@needs_sandbox
@pytest.mark.parametrize("grading", lcb.GRADING_MODES)
def test_runtime_errors_and_compile_errors_say_what_happened(grading):
    gap, avg = _problem("9001"), _problem("abc901_a")
    crash = lcb.grade(gap, SOLUTIONS["9001"]["crash"], TIMEOUT_S, grading)
    assert crash["test_index"] == 0 and "IndexError" in crash["reason"]
    broken = lcb.grade(avg, "n = int(input(\nprint(n)\n", TIMEOUT_S, grading)
    assert broken["status"] == "compile_error" and broken["test_index"] == 0 and "SyntaxError" in broken["reason"]
    assert broken["lcb_error_code"] == -4  # parsed in the sandbox, never in the harness process
    missing = lcb.grade(gap, "class Solution:\n    def other(self, nums):\n        return 0\n", TIMEOUT_S, grading)
    assert missing["status"] == "runtime_error" and "no method Solution.largestGap" in missing["reason"]
    hungry = lcb.grade(avg, "x = bytearray(8 * 2**30)\n", TIMEOUT_S, grading)  # past the sandbox's memory limit
    assert hungry["status"] == "memory_limit" and hungry["lcb_error_code"] == -4


@needs_sandbox
@pytest.mark.parametrize("grading", lcb.GRADING_MODES)
def test_lcb_conventions_prints_exit_codes_and_plain_functions(grading):
    gap, avg = _problem("9001"), _problem("abc901_a")
    chatty = SOLUTIONS["9001"]["correct"].replace("return max", "print('debugging' * 10**6); return max")
    exits = SOLUTIONS["abc901_a"]["correct"] + "exit(3)\n"  # LCB ignores how a program exits
    plain = "def largestGap(nums):\n    return max(abs(a - b) for a, b in zip(nums, nums[1:]))\n"
    main_guard = "def main():\n" + "".join("    " + line + "\n" for line in
                                           SOLUTIONS["abc901_a"]["correct"].splitlines()) + \
                 "if __name__ == '__main__':\n    main()\n"
    programs = [(gap, chatty), (avg, exits), (gap, plain), (avg, main_guard)]
    grades = [lcb.grade(problem, code, TIMEOUT_S + 1, grading) for problem, code in programs]
    assert [g["status"] for g in grades] == ["passed"] * len(programs), grades


@needs_sandbox
@pytest.mark.skipif(not importlib.util.find_spec("numpy"), reason="numpy is not installed")
def test_numpy_results_pass_only_the_fair_judge():
    numpy_answer = ("import numpy as np\nclass Solution:\n    def prefixMaxima(self, nums):\n"
                    "        return np.maximum.accumulate(np.array(nums))\n")
    fair = lcb.grade(_problem("9003"), numpy_answer, TIMEOUT_S + 1, "fair")
    runner = lcb.grade(_problem("9003"), numpy_answer, TIMEOUT_S + 1, "lcb_runner")
    assert fair["status"] == "passed"  # compared by value, through JSON
    # lcb_runner: `array == list` is an array, whose truth value raises: a runtime error after a True
    assert (runner["status"], runner["lcb_results"], runner["lcb_error_code"]) == ("runtime_error", [True, -4], -4)


@needs_sandbox
def test_state_carries_across_tests_only_under_lcb_runner():
    counter = ("class Solution:\n    def prefixMaxima(self, nums):\n"
               "        self.calls = getattr(self, 'calls', 0) + 1\n"
               "        return list(accumulate(nums, max)) if self.calls == 1 else []\n")
    assert lcb.grade(_problem("9003"), counter, TIMEOUT_S, "fair")["status"] == "passed"  # a fresh Solution each
    runner = lcb.grade(_problem("9003"), counter, TIMEOUT_S, "lcb_runner")  # one Solution for every test
    assert (runner["status"], runner["test_index"], runner["lcb_results"]) == ("wrong_answer", 1, [True, False])


@needs_sandbox
@pytest.mark.parametrize("grading", lcb.GRADING_MODES)
def test_time_limits_count_cpu_seconds_of_the_solution(grading):
    avg = _problem("abc901_a")
    read = "n = int(input())\na = list(map(int, input().split()))\n"
    spin = lcb.grade(avg, read + "while True:\n    pass\n", TIMEOUT_S, grading)
    assert spin["status"] == "timeout" and TIMEOUT_S * 0.9 <= spin["cpu_s"] < TIMEOUT_S + 0.5, spin
    # Waiting is not computing: 1.5 s asleep passes a 1 s limit (lcb_runner's wall-clock alarm would
    # fail it; a deliberate difference). Sleeping past the wall clock of 5 x 1 + 5 s is a timeout.
    nap = lcb.grade(avg, "import time\ntime.sleep(1.5)\n" + SOLUTIONS["abc901_a"]["correct"], TIMEOUT_S, grading)
    assert nap["status"] == "passed" and nap["wall_s"] > 1.5, nap
    asleep = lcb.grade(avg, "import time\ntime.sleep(60)\n", TIMEOUT_S, grading)
    assert asleep["status"] == "timeout" and 10 <= asleep["wall_s"] < 30 and asleep["test_index"] == 0, asleep


@needs_sandbox
def test_a_process_that_dies_is_lcb_runners_test_runner_error():
    gap = _problem("9001")
    died = lcb.grade(gap, SOLUTIONS["9001"]["correct"].replace("return max", "exit(0); return max"),
                     TIMEOUT_S, "lcb_runner")
    assert (died["status"], died["lcb_error_code"], died["lcb_results"]) == ("runtime_error", -5, [-2])
    assert "SystemExit" in died["reason"] and died["test_index"] == 0
    # One long C call never lets the timer's exception in: the per-test CPU cap ends the process.
    stuck = lcb.grade(gap, "class Solution:\n    def largestGap(self, nums):\n        return sum(range(10**12))\n",
                      TIMEOUT_S, "lcb_runner")
    assert (stuck["status"], stuck["lcb_error_code"]) == ("timeout", -5) and stuck["cpu_s"] < 2 * TIMEOUT_S + 3


@needs_sandbox
@pytest.mark.parametrize("grading", lcb.GRADING_MODES)
def test_a_solution_cannot_print_the_judges_verdict(grading):
    """A wrong solution that writes a passing verdict in the judge's old format (on every descriptor the
    judge might hold) and leaves fails: only lines with the run's secret token count. (The fair driver's
    answer line can be printed, but it is compared with the expected value: forging it means solving.)"""
    forged = json.dumps({"final": {"results": [True] * 9, "error_code": None, "error": "", "test": None,
                                   "phase": "test", "cpu_s": 0.0}})
    code = ("import os\nclass Solution:\n    def largestGap(self, nums):\n"
            f"        line = ('\\n@@lcb-judge@@ ' + {forged!r} + '\\n' + '@@harness-lcb-result@@0\\n').encode()\n"
            "        for fd in range(1, 20):\n"
            "            try:\n                os.write(fd, line)\n            except OSError:\n                pass\n"
            "        os._exit(0)\n")
    grade = lcb.grade(_problem("9001"), code, TIMEOUT_S, grading)
    assert not grade["passed"], grade
    assert grade["status"] == {"lcb_runner": "runtime_error", "fair": "wrong_answer"}[grading], grade
    if grading == "lcb_runner":
        assert (grade["lcb_error_code"], grade["lcb_results"]) == (-5, [-2])  # died without a verdict


# ------------------------------------------------------------------------------ lm-eval hooks

@pytest.fixture
def lcb_utils():
    sys.path.insert(0, str(TASKS_DIR / "code"))
    try:
        import lcb_utils
        yield lcb_utils
    finally:
        sys.path.remove(str(TASKS_DIR / "code"))


def _docs(lcb_utils, **options):
    data = lcb_utils.load(**{"release_version": "release_v6", "start_date": "2024-06-01",
                             "end_date": "2024-12-31", "timeout_s": TIMEOUT_S, "version": 1.0, **options})
    return {d["question_id"]: d for d in data["eval"]}, {d["question_id"]: d for d in data["pool"]}


def test_prompts_and_demonstration_targets(fixture_data, lcb_utils):
    evaluated, pool = _docs(lcb_utils)
    functional, stdin = lcb_utils.doc_to_text(evaluated["9003"]), lcb_utils.doc_to_text(evaluated["1950_B"])
    assert "### Question:\nGiven an integer array nums" in functional
    assert "```python\nclass Solution:\n    def prefixMaxima" in functional and "standard input" not in functional
    assert "standard input" in stdin and stdin.endswith("### Answer: (one ```python block)\n\n")
    assert lcb_utils.doc_to_target(evaluated["9003"]) == ""  # lm-eval logs a target for every sample
    assert lcb_utils.doc_to_target(pool["9001"]).startswith("```python\nclass Solution:")
    with pytest.raises(HarnessError, match="without reference solutions"):
        lcb_utils.doc_to_target(pool["abc901_a"])


@needs_sandbox
@pytest.mark.parametrize("grading", lcb.GRADING_MODES)
def test_process_results_grades_every_sample(fixture_data, lcb_utils, grading):
    from harness.codeeval import GRADES

    evaluated, _ = _docs(lcb_utils, grading=grading)
    doc = evaluated["9003"]
    assert doc["grading_mode"] == grading
    right = SOLUTIONS["9003"]["correct"]
    fenced = f"Keep a running maximum.\n```python\n{right}```\nIt runs in O(n)."
    wrong = "```python\n" + SOLUTIONS["9003"]["wrong"] + "```"
    metrics = lcb_utils.process_results(doc, [[fenced, right, wrong]])  # the keep-all filter's shape
    grades = GRADES.take(doc)
    assert {g["grading"] for g in grades} == {grading}
    if grading == "fair":  # the bare answer is code too
        assert metrics == {"pass@1": pytest.approx(2 / 3)}
        assert [g["status"] for g in grades] == ["passed", "passed", "wrong_answer"]
        assert grades[2]["reason"].startswith("test 1 of 4 (public): expected '[1, 3, 3, 5]'")
    else:  # lcb_runner takes nothing from an answer without two fence lines
        assert metrics == {"pass@1": pytest.approx(1 / 3)}
        assert [g["status"] for g in grades] == ["passed", "runtime_error", "wrong_answer"]
        assert grades[2]["reason"].startswith("test 1 of 4 (public): expected [1, 3, 3, 5], got [")
        assert grades[2]["lcb_results"] == [False]
    answer = "```python\n" + SOLUTIONS["1950_B"]["public_only"] + "```"
    single = lcb_utils.process_results(evaluated["1950_B"], [[answer]])
    assert single == {"pass@1": 0.0}  # take_first's shape: one bare string
    assert "(private)" in GRADES.take(evaluated["1950_B"])[0]["reason"]


def test_the_yaml_task_under_lm_eval(fixture_data):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    task = manager.load(["harness_livecodebench"])["tasks"]["harness_livecodebench"]
    cfg = task.config
    assert cfg.output_type == "generate_until" and cfg.repeats == 1 and cfg.unsafe_code
    assert cfg.dataset_kwargs["release_version"] == "release_v6" and cfg.dataset_kwargs["grading"] == "lcb_runner"
    assert not any("```" in stop for stop in cfg.generation_kwargs["until"])
    assert cfg.generation_kwargs["max_gen_toks"] == 2000 and cfg.generation_kwargs["do_sample"] is False
    evaluated, pool = list(task.test_docs()), list(task.training_docs())
    info = cfg.custom_dataset.pool_info(**cfg.dataset_kwargs)
    assert (len(evaluated), len(pool)) == (info.n_eval, info.n_pool) == (5, 4) and info.carved
    assert not set(ids(evaluated)) & set(ids(pool))
    with pytest.raises(HarnessError, match="2 demonstrations, 1 available"):
        task.fewshot_context(evaluated[0], num_fewshot=2)
    one = task.fewshot_context(evaluated[0], num_fewshot=1)
    assert one.count("### Question:") == 2 and "def largestGap" in one


@needs_sandbox
def test_lm_eval_hands_all_repeats_to_process_results(fixture_data):
    """Through lm-eval's evaluator with a stub model: 3 samples per problem reach the grader."""
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    from harness.codeeval import GRADES

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    task = manager.load(["harness_livecodebench"])["tasks"]["harness_livecodebench"]
    task.set_config(key="repeats", value=3)
    answers = {qid: [s["correct"], s["correct"], s["wrong"]] for qid, s in SOLUTIONS.items()}

    class Canned(LM):
        def generate_until(self, requests):
            served: dict[str, int] = {}
            out = []
            for req in requests:
                qid = req.doc["question_id"]
                out.append("```python\n" + answers[qid][served.get(qid, 0)] + "```")
                served[qid] = served.get(qid, 0) + 1
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

    GRADES.clear()
    name = "harness_livecodebench"
    out = lm_eval.evaluate(lm=Canned(), task_dict={name: task}, samples={name: [0, 1]}, log_samples=True,
                           confirm_run_unsafe_code=True, verbosity="ERROR")
    assert out["results"]["harness_livecodebench"]["pass@1,all_samples"] == pytest.approx(2 / 3)
    for sample in out["samples"]["harness_livecodebench"]:
        grades = GRADES.take(sample["doc"])
        assert [g["status"] for g in grades] == ["passed", "passed", "wrong_answer"]


@pytest.mark.parametrize("grading", [None, "fair"])
def test_the_grading_mode_is_a_task_option_named_in_the_record(fixture_data, grading):
    from conftest import compose
    from harness.tasks import TaskHandle

    overrides = ["task=livecodebench", "task.dataset_options.start_date=2024-06-01"]
    handle = TaskHandle.from_cfg(compose(*overrides, *([f"task.grading={grading}"] if grading else [])).task)
    assert handle.pool_info.to_dict()["grading"] == (grading or "lcb_runner")  # record.data.pool
    assert {d["grading_mode"] for d in handle.eval_docs + handle.pool_docs} == {grading or "lcb_runner"}


def test_an_unknown_grading_mode_is_a_one_line_error(fixture_data, capsys, tmp_path, monkeypatch):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "model=tiny-random", "task=livecodebench", "strategy=base", "task.grading=strict"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert exit_.value.code == 2 and errors == [
        "error: livecodebench: unknown grading mode 'strict': set task.grading=lcb_runner (lcb_runner's verdicts, "
        "quirks included) or task.grading=fair (each test in a fresh process)"]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("record.json"))
