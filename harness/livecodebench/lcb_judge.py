"""lcb_runner's rules for grading one LiveCodeBench sample, as a program the sandbox runs (grading=lcb_runner).

grading.py beside it runs this file as the sandbox's main.py, once per sample, with a JSON job on
stdin: {"code", "fn_name" (null: a stdin/stdout program), "prelude" (the names lcb_runner imports before
a solution), "inputs", "outputs" (public tests, then private ones), "timeout_s", "backstop_s", "token"}.
It grades the sample the way lcb_runner's `testing_util.run_test` does, in one process, and reports on the
stdout it started with, each line marked with the run's random token (read from stdin before the solution
runs, so a solution cannot print a verdict of its own by accident or by copying this file's format):
`@@lcb-judge@@TOKEN {"test": i}` as test i starts, then `@@lcb-judge@@TOKEN {"final": ...}` with
lcb_runner's per-test results (True, or its error code at the first failure: -2 wrong answer,
-3 time limit, -4 runtime error), the error code, a reason, the phase that failed and the CPU seconds the
solution used. A process that dies before the final line is lcb_runner's "TestRunnerError" (-5).

What this reproduces, because lcb_runner's verdicts depend on it:
  - Python's int<->str limit raised to 50,000 digits (lcb_runner raises it in its grading process).
  - Its hardening: quit, os.kill, os.getcwd, subprocess.Popen, help... set to None; `import resource`
    (and ipdb, joblib, psutil, tkinter) refused.
  - Functional problems: the prelude and the code run once as a module ("compile", under its own time
    limit). When the text "class Solution" appears in the code, one Solution() serves every test, so
    state carries over; otherwise the function of that name is called. Each input line is one JSON
    argument; a returned tuple becomes a list, nothing nested is converted, and the result must `==`
    the expected JSON value (a numpy array is an error). `exit()` in a method kills the process.
  - stdin problems: a trailing `if __name__ == '__main__':` block is replaced by its body; top-level
    imports stay at module level and every other statement becomes the body of one function, called
    once per test (so `global` names are not the script's variables). During the call stdin is a fake:
    read() and readlines() (lines without their newline) give the input, readline() gives it line by
    line, `sys.stdin.buffer.readline()` always the first line, iteration fails. `builtins.open` is a
    mock file holding the input, but the prelude binds the real `open` in the solution's namespace, so
    `open(0)` reads the real stdin, /dev/null; names imported from sys before the call (`from sys import
    stdin`) keep the real objects, whose read/readline/readlines alone are faked. stdout is a StringIO
    (no .buffer, and close() raises); SystemExit ends the call and keeps the output so far. The output
    matches when its stripped lines equal the expected stripped lines, each exactly or as equal lists of
    Decimals (a signalling NaN makes the comparison raise: one -4 for the whole sample).
  - The time limit raises an exception inside the solution, which the solution may catch; a caught one
    prints lcb_runner's timer message into the captured output.
Deliberate differences: the per-test limit counts the solution's CPU seconds (ITIMER_PROF, checked
against time.process_time()), not wall-clock time (lcb_runner's alarm), so a busy machine cannot fail a
solution; a wall clock of `backstop_s` stops a solution that sleeps or blocks. A solution stuck in one C
call past twice the limit plus a second is killed there (RLIMIT_CPU), where lcb_runner waits for its
whole-sample limit; either way the process dies (-5). Memory is the sandbox's to limit (lcb_runner sets
none), and numpy, which lcb_runner's process has loaded, is loaded only for code that names it.

Standard library only: it runs in the sandboxed interpreter.
"""
import ast
import io
import json
import math
import os
import resource
import signal
import sys
import time
import types

MARK = "@@lcb-judge@@"
MAX_STR_DIGITS = 50_000
REFUSED_MODULES = ("ipdb", "joblib", "resource", "psutil", "tkinter")


class TimeoutException(Exception):
    """Raised inside the solution at its time limit; lcb_runner recognizes a timeout by this name in repr()."""


class Clock:
    """One phase's limits, `timeout_s` of CPU and `backstop_s` of wall clock, and the CPU it used.

    Either limit raises TimeoutException inside whatever code runs, as lcb_runner's alarm does. The CPU
    timer (ITIMER_PROF) counts in clock ticks, which on a busy machine run ahead of the exact count of
    time.process_time(): it fires only once the exact count has reached the limit.
    """

    def __init__(self, timeout_s: float, backstop_s: float):
        self.timeout_s, self.backstop_s = timeout_s, backstop_s
        self.cpu_s = 0.0
        self._start: float | None = None

    def arm(self) -> None:
        self._start = time.process_time()
        # Inside one long C call (sum over a huge range, say) the timer's exception waits for the call to
        # end, as lcb_runner's does; RLIMIT_CPU, counted like process_time(), kills the process at twice
        # the limit plus a second, where lcb_runner would wait for its whole-sample limit.
        self._cpu_cap(math.ceil(self._start + 2 * self.timeout_s + 1))
        signal.setitimer(signal.ITIMER_REAL, self.backstop_s)
        signal.setitimer(signal.ITIMER_PROF, self.timeout_s)

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._cpu_cap(None)
        if self._start is not None:
            self.cpu_s += time.process_time() - self._start
            self._start = None

    def on_timer(self, signum, frame):
        if self._start is None:
            return
        left = self.timeout_s - (time.process_time() - self._start)
        if signum == signal.SIGPROF and left > 0:
            signal.setitimer(signal.ITIMER_PROF, max(left, 0.001))
            return
        print("timeout occured: alarm went off")  # what lcb_runner's handler prints, wherever stdout points
        raise TimeoutException

    @staticmethod
    def _cpu_cap(seconds: int | None) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if seconds is None or (hard != resource.RLIM_INFINITY and seconds > hard):
            seconds = hard
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, hard))


class Report:
    def __init__(self, fd: int, token: str):
        self.fd, self.mark = fd, MARK + token

    def send(self, **fields) -> None:
        data = ("\n" + self.mark + " " + json.dumps(fields) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]


class TestsFailed(Exception):
    """A sample's grading ended early: lcb_runner's results so far and why."""

    def __init__(self, results: list, code: int, error: str, test: int | None, phase: str = "test"):
        super().__init__(error)
        self.results, self.code, self.error, self.test, self.phase = results, code, error, test, phase


def short(value, length: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= length else text[: length // 2] + " ... " + text[-length // 2:]


def failure_code(error: BaseException) -> int:
    return -3 if "timeoutexception" in repr(error).lower() else -4


def as_result(value):
    """What lcb_runner keeps of a comparison: a numpy array by its first element, a numpy bool as a bool."""
    if type(value).__name__ == "ndarray":
        value = value.item(0)
    return bool(value)


# ------------------------------------------------------------------------------ the process

def take_streams(token: str) -> Report:
    """The report keeps the real stdout; the solution gets stdin, stdout and stderr on /dev/null.

    lcb_runner's grading process has /dev/null for stdin, and nobody reads its stdout or stderr.
    """
    report = Report(os.dup(1), token)
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    sys.stdin = open(os.devnull)
    return report


def harden() -> None:
    """lcb_runner's reliability guard, as far as it changes what a solution sees."""
    import builtins
    import shutil
    import subprocess

    os.environ["OMP_NUM_THREADS"] = "1"
    builtins.quit = None
    builtins.help = None
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    for name in REFUSED_MODULES:
        sys.modules[name] = None


def preload(job: dict) -> None:
    """Import before the guard what lcb_runner's process has already imported when a solution runs.

    unittest.mock fakes stdin. numpy is loaded in lcb_runner's grader, so `import numpy` there is a lookup
    that the guard cannot break; numpy's own import needs functions the guard removes. It is loaded here
    only for code that names it (its import costs a tenth of a second).
    """
    if not job["fn_name"]:
        import unittest.mock  # noqa: F401
    if "numpy" in job["code"]:
        try:
            import numpy  # noqa: F401
        except ImportError:
            pass


def load_module(code: str, clock: Clock):
    """Run the code as a module; with "class Solution" in its text, an instance of it (lcb_runner's test)."""
    clock.arm()
    try:
        module = types.ModuleType("tmp_sol", "")
        exec(code, module.__dict__)
        return module.Solution() if "class Solution" in code else module
    finally:
        clock.disarm()


def lookup(owner, name: str):
    try:
        return getattr(owner, name) if hasattr(owner, name) else None
    except Exception:
        return None


# ------------------------------------------------------------------------------ functional problems

def grade_functional(job: dict, clock: Clock, report: Report) -> list:
    code = job["prelude"] + "\n\n" + job["code"]
    try:
        solution = load_module(code, clock)
    except Exception as e:
        raise TestsFailed([-4], -4, short(e), None, "compile") from None
    method = lookup(solution, job["fn_name"])
    if method is None:
        raise TestsFailed([-4], -4, f"no method Solution.{job['fn_name']} (nor a function "
                                    f"{job['fn_name']}) is defined", None, "compile")
    try:
        arguments = [[json.loads(line) for line in text.split("\n")] for text in job["inputs"]]
        expected = [json.loads(text) for text in job["outputs"]]
    except Exception as e:
        raise TestsFailed([-4], -4, f"the test data cannot be read: {short(e)}",
                          None, "data") from None
    results = []
    for i, (args, want) in enumerate(zip(arguments, expected)):
        report.send(test=i)
        clock.arm()
        try:
            got = method(*args)
            clock.disarm()
            if isinstance(got, tuple):
                got = list(got)
            same = got == want
            results.append(same)
            if not same:
                raise TestsFailed(results, -2, f"expected {short(want)}, got {short(got)}", i)
        except TestsFailed:
            raise
        except Exception as e:
            clock.disarm()
            raise TestsFailed(results + [failure_code(e)], failure_code(e), short(e), i) from None
    return results


# ------------------------------------------------------------------------------ stdin problems

def unguard_main(code: str) -> str:
    """A last statement `if __name__ == '__main__':` is replaced by its body (its else branch dropped)."""
    try:
        tree = ast.parse(code)
        last = tree.body[-1]
        if isinstance(last, ast.If) and ast.unparse(last.test).strip() == "__name__ == '__main__'":
            return ast.unparse(tree.body[:-1]) + "\n" + ast.unparse(last.body)
    except Exception:
        pass
    return code


def as_function(code: str, prelude: str) -> str:
    """The prelude, the script's top-level imports, then everything else as the body of wrapped_function().

    Code that does not parse comes back unchanged (and fails to compile).
    """
    try:
        tree = ast.parse(code)
        imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        function = ast.FunctionDef(name="wrapped_function", body=body, decorator_list=[], lineno=-1,
                                   args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[],
                                                      defaults=[]))
        return prelude + "\n" + ast.unparse(imports) + "\n" + ast.unparse(function)
    except Exception:
        return code


class FakeStdin:
    """sys.stdin while a stdin solution runs (see the module docstring for what each method gives)."""

    def __init__(self, text: str):
        self.text = text
        self.lines = io.StringIO(text)
        self.buffer = FakeBuffer(text)

    def read(self, *args):
        return self.text

    def readline(self, *args):
        return self.lines.readline(*args)

    def readlines(self, *args):
        return self.text.split("\n")

    def __getattr__(self, name):
        return getattr(self.lines, name)


class FakeBuffer:
    def __init__(self, text: str):
        self.data = text.encode("utf-8")

    def read(self, *args):
        return self.data

    def readline(self, *args):
        return self.data.split(b"\n")[0] + b"\n"


def call_with_input(function, text: str) -> None:
    """Call the wrapped script with `text` as its input; SystemExit ends it quietly.

    The patches go on in the order lcb_runner's stacked decorators apply them: the real stdin's read,
    readlines and readline first, then sys.stdin itself, then open().
    """
    from contextlib import ExitStack
    from unittest import mock

    lines = iter(text.split("\n"))
    with ExitStack() as patches:
        for target, value in (("sys.stdin.read", lambda *args: text),
                              ("sys.stdin.readlines", lambda *args: text.split("\n")),
                              ("sys.stdin.readline", lambda *args: next(lines)),
                              ("sys.stdin", FakeStdin(text)),
                              ("builtins.open", mock.mock_open(read_data=text))):
            patches.enter_context(mock.patch(target, value))
        try:
            function()
        except SystemExit:
            pass


class CapturedStdout:
    """sys.stdout replaced by a StringIO for the call; its close() takes an argument, as lcb_runner's does."""

    def __enter__(self):
        self.saved = sys.stdout
        self.buffer = io.StringIO()
        self.buffer.close = lambda x: 1
        sys.stdout = self.buffer
        return self

    def __exit__(self, *exc):
        self.text = self.buffer.getvalue()
        sys.stdout = self.saved


def stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def as_decimals(line: str):
    from decimal import Decimal

    try:
        return [Decimal(token) for token in line.split()]
    except Exception:
        return None


def compare_output(got: str, want: str) -> str | None:
    """None when the output matches, else why not. A comparison that raises (a signalling NaN) raises."""
    got_lines, want_lines = stripped_lines(got), stripped_lines(want)
    if len(got_lines) != len(want_lines):
        return f"expected {len(want_lines)} output line(s), got {len(got_lines)}"
    for i, (g, w) in enumerate(zip(got_lines, want_lines), 1):
        if g == w:
            continue
        got_numbers, want_numbers = as_decimals(g), as_decimals(w)
        if got_numbers is None or want_numbers is None or got_numbers != want_numbers:
            return f"line {i}: expected {short(w, 80)}, got {short(g, 80)}"
    return None


def grade_stdin(job: dict, clock: Clock, report: Report) -> list:
    code = as_function(unguard_main(job["code"]), job["prelude"])
    try:
        module = load_module(code, clock)
    except Exception as e:
        raise TestsFailed([-4], -4, short(e), None, "compile") from None
    function = lookup(module, "wrapped_function")
    if function is None:
        raise TestsFailed([-4], -4, "the program did not compile to a function",
                          None, "compile")
    results = []
    for i, (text, want) in enumerate(zip(job["inputs"], job["outputs"])):
        report.send(test=i)
        with CapturedStdout() as output:
            clock.arm()
            try:
                call_with_input(function, text)
                clock.disarm()
            except Exception as e:
                clock.disarm()
                raise TestsFailed(results + [failure_code(e)], failure_code(e), short(e), i) from None
        why = compare_output(output.text, want)
        if why is not None:
            raise TestsFailed(results + [-2], -2, why, i)
        results.append(True)
    return results


# ------------------------------------------------------------------------------ main

def lcb_results(values: list) -> list:
    """lcb_runner's per-test list in JSON: error codes as they are, comparison results as booleans."""
    return [v if isinstance(v, bool) or type(v) is int else as_result(v) for v in values]


def grade(job: dict, report: Report) -> dict:
    clock = Clock(float(job["timeout_s"]), float(job["backstop_s"]))
    for sig in (signal.SIGPROF, signal.SIGALRM):
        signal.signal(sig, clock.on_timer)
    grade_tests = grade_functional if job["fn_name"] else grade_stdin
    final = {"results": [], "error_code": None, "error": "", "test": None, "phase": "test"}
    try:
        final["results"] = grade_tests(job, clock, report)
    except TestsFailed as failed:
        final.update(results=failed.results, error_code=failed.code, error=failed.error, test=failed.test,
                     phase=failed.phase)
    except Exception as e:  # lcb_runner's run_test turns any other error into a single -4
        final.update(results=[-4], error_code=-4, error=short(e))
    final["results"] = lcb_results(final["results"])
    final["cpu_s"] = round(clock.cpu_s, 4)
    return final


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    # The sandbox's prelude makes a write past its file-size limit kill the process (SIGXFSZ); lcb_runner's
    # process ignores SIGXFSZ, as Python does, so such a write fails one test with an OSError, as it did.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sys.set_int_max_str_digits(MAX_STR_DIGITS)
    preload(job)
    report = take_streams(job.pop("token"))
    harden()
    try:
        final = grade(job, report)
    except BaseException as e:  # SystemExit from a method, KeyboardInterrupt...: lcb_runner's process dies
        Clock(0, 0).disarm()
        report.send(died=short(e))
        os._exit(1)
    report.send(final=final)
    os._exit(0)  # no interpreter teardown: the solution's threads and atexit hooks are not graded


if __name__ == "__main__":
    main()
