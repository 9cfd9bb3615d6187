"""Name why a sandboxed program ended from what the supervisor saw: signals, exit codes, CPU used.

Never from the program's output: a failing program could print a fake `MemoryError` traceback. The
prelude (prelude.py: trusted code in the program's interpreter) turns the exception a program dies of
into an exit code of DIED_OF by its class and errno; stderr only supplies the human-readable reason.
A program that calls exit() with one of those codes itself gets that status too: it fails either way.
"""
from __future__ import annotations

import os
import re
import signal

# Exit codes the prelude reserves for "died of this limit" (prelude.died_of returns them).
DIED_OF = {208: "memory_limit", 209: "process_limit", 210: "file_size_limit", 211: "network_blocked"}
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: |$)")
_NAMED_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Iteration)(: |$)")


def classify(report: dict, stderr: str, *, wall_s: float, cpu_s: float,
             output_exceeded: str | None, backstop: bool) -> tuple[str, str, int | None]:
    """(status, reason, returncode) of one run. returncode is -signal when a signal killed the program."""
    exit_status = report.get("exit")
    returncode = None
    if exit_status is not None:
        returncode = (-os.WTERMSIG(exit_status) if os.WIFSIGNALED(exit_status)
                      else os.WEXITSTATUS(exit_status))
    if report.get("error"):
        return "sandbox_error", report["error"], returncode
    if output_exceeded:
        return "output_limit", f"{output_exceeded} exceeded its cap; the program was stopped", returncode
    if exit_status is None:
        if report.get("stopped") == "timeout" or backstop:
            return "timeout", f"wall-clock limit of {wall_s:g} s exceeded", None
        return "sandbox_error", f"the sandbox ended without a result ({report.get('stopped', 'no report')})", None
    last = last_error_line(stderr)
    used = program_cpu_s(report)
    cpu_signal = -returncode in (signal.SIGPROF, signal.SIGXCPU) or (
        returncode == -signal.SIGKILL and report.get("cpu_s", 0) >= cpu_s - 0.05)  # the hard RLIMIT_CPU
    if cpu_signal or (used is not None and used > cpu_s):  # over it in children, or without the timer
        how = _signame(-returncode) if returncode < 0 else f"exit code {returncode}"
        return "cpu_limit", f"CPU-time limit of {cpu_s:g} s exceeded ({used or 0:.2f} s used; {how})", returncode
    if returncode < 0:
        sig = -returncode
        if sig == signal.SIGXFSZ:
            return "file_size_limit", "file-size limit exceeded (SIGXFSZ)", returncode
        return "signal", f"killed by {_signame(sig)}" + (f" ({last})" if last else ""), returncode
    if returncode == 0:
        return "ok", "exit code 0", 0
    if returncode in DIED_OF:
        return DIED_OF[returncode], last or f"exit code {returncode}", returncode
    return "error", last or f"exit code {returncode}", returncode


def program_cpu_s(report: dict) -> float | None:
    """The program's own CPU seconds: what its exit reports, less the start-up the prelude reported."""
    if report.get("cpu_s") is None:
        return None
    return round(max(0.0, report["cpu_s"] - report.get("start_cpu_s", 0.0)), 4)


def last_error_line(stderr: str) -> str:
    """The exception line of the last traceback, cut to 300 characters.

    Processes of one program share stderr (a fork bomb's children all print tracebacks), so lines can
    interleave: failing the clean case, the last line that looks like an exception, else the last line.
    """
    lines = stderr.splitlines()
    header = max((i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")),
                 default=-1)
    found = next((line for line in lines[header + 1:] if _EXCEPTION_LINE.match(line)), None) if header >= 0 else None
    found = found or next((line for line in reversed(lines) if _NAMED_EXCEPTION_LINE.match(line)), None)
    found = found or next((line for line in reversed(lines) if line.strip()), "")
    return found.strip()[:300]


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
