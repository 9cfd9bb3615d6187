"""Grading LiveCodeBench solutions: lcb_runner's way or the fair way (`grading`).

The public tests run first, then the private ones; grading stops at the first failure and a
sample passes only if every test passes. Every program runs in the sandbox (harness/sandbox) with the
names lcb_runner imports before a solution (`List`, `defaultdict`, `sqrt`, ...), with Python's
int<->str limit raised to 50,000 digits, and with a time limit per test (6 s by default, lcb_runner's)
counted in CPU seconds of the solution itself, so that a busy machine cannot fail a solution: the
interpreter's start-up is outside it (in lcb_runner mode the pre-imports too; in fair mode they are part
of the program, about 0.05 s). A solution that waits without computing (sleep, a blocked read) is
stopped by a wall clock of 5 x the limit + 5 s. Two modes (`grading`):
  - lcb_runner (default): lcb_runner's `testing_util.run_test`, quirks included, run by
    lcb_judge.py (beside this file) in one sandboxed process per sample (its docstring lists the rules). Verdicts
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

import json
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from pathlib import Path

from harness.errors import HarnessError
from harness.livecodebench.problems import TASK, Problem, Test, TooManyDigits, lcb_json, parse_problem
from harness.livecodebench.programs import PRELUDE, RESULT_MARK, functional_program, stdin_program

DEFAULT_TIMEOUT_S = 6.0  # lcb_runner's --timeout: seconds per test
GRADING_MODES = ("lcb_runner", "fair")
DEFAULT_GRADING = "lcb_runner"
MEMORY_MB = 4096  # LCB sets no memory limit; this only stops runaway programs
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
    """One sandboxed process runs lcb_judge.py on every test, with lcb_runner's rules."""
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
    answers = [line for line in stdout.split("\n") if line.startswith(RESULT_MARK)]
    try:
        expected = lcb_json(test.output)
    except TooManyDigits as exc:
        return "runtime_error", f"the expected output cannot be read: {exc}", seconds, result.cpu_s
    try:
        got = lcb_json(answers[-1][len(RESULT_MARK):])
    except (IndexError, ValueError):  # it left before the driver could answer (os._exit, say)
        return "runtime_error", "the program ended without returning a value", seconds, result.cpu_s
    if got == expected:
        return "passed", "", seconds, result.cpu_s
    return ("wrong_answer", f"expected {_short(test.output.strip())}, got {_short(answers[-1][len(RESULT_MARK):])}",
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
