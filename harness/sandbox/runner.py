"""Parent side of the sandbox: launch boot.py, read its output under caps, stop it, name the outcome.

The harness process has torch threads, so nothing runs between fork and exec here (no preexec_fn):
subprocess starts a fresh interpreter on boot.py, which does all the confining on its own side.
"""
from __future__ import annotations

import ast
import functools
import logging
import os
import selectors
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.sandbox.classify import classify, program_cpu_s

log = logging.getLogger(__name__)
SANDBOX_DIR = str(Path(__file__).resolve().parent)
# -I -S: nothing of the harness's environment or site-packages. boot.py and its siblings are imported
# from this directory, so their bytecode is cached (5 ms a run) unless the harness itself writes none.
_LAUNCH = ["-I", "-S", *(["-B"] if sys.dont_write_bytecode else []), "-c",
           f"import sys; sys.path.insert(0, {SANDBOX_DIR!r}); import boot; boot.main()"]
# Every layer a run may report, in the order the README explains them.
LAYERS = ("tmpdir", "scrubbed_env", "new_session", "rlimits", "nproc_limit", "unprivileged_uid",
          "user_namespace", "mount_namespace", "private_proc", "pid_namespace", "net_namespace", "ipc_namespace",
          "subreaper", "no_new_privs", "landlock_fs", "landlock_net", "landlock_signal", "seccomp_sockets",
          "seccomp_ipc", "seccomp_memfd", "seccomp_keyrings", "seccomp_namespaces", "seccomp_inotify", "audit_hook")
_PARENT_LAYERS = ("tmpdir", "scrubbed_env", "new_session")
# What `python main.py` would put on sys.path from site, without running its .pth files (see prelude.py).
_SITE_DIRS = ":".join(p for p in (site.getsitepackages() if hasattr(site, "getsitepackages") else [])
                      if os.path.isdir(p) and ":" not in p)
_SETUP_GRACE_S = 5.0  # the harness's own backstop beyond the sandbox's wall clock (setup, a stuck boot)
_STOP_GRACE_S = 2.0   # after asking the sandbox to stop, how long before killing it outright
_DRAIN_S = 1.0        # after killing, how long to wait for pipes that something else still holds
_unusable: set[str] = set()  # layers that broke a run on this machine: not attempted again


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0      # wall clock of the whole run, start-up included: the backstop for programs that wait
    cpu_s: float = 10.0       # the program's own CPU seconds, from its first line (start-up excluded: prelude.py)
    memory_mb: int = 1024     # RLIMIT_AS
    nproc: int = 32           # processes/threads the program may have
    fsize_mb: int = 16        # largest file it may write
    output_kb: int = 1024     # stdout and stderr are each cut at this size; exceeding it stops the program
    nofile: int = 64


@dataclass
class RunResult:
    status: str   # ok | error | timeout | cpu_limit | memory_limit | process_limit | file_size_limit
    #               | output_limit | network_blocked | signal | sandbox_error
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    protections: tuple[str, ...]
    cpu_s: float | None = None  # the program's own CPU seconds (children it waited for included), when known

    @property
    def passed(self) -> bool:
        return self.status == "ok"


def run_python(source: str, *, stdin: str | bytes = "", limits: Limits = Limits(),
               argv: Sequence[str] = ()) -> RunResult:
    """Run untrusted Python source in a fresh sandboxed interpreter and say how it ended."""
    return run_sandboxed(source, stdin=stdin, limits=limits, argv=argv)


WALL_PER_CPU_S, WALL_GRACE_S = 5.0, 5.0  # cpu_time_limits' wall clock: 5 × the CPU limit + 5 s


def cpu_time_limits(cpu_s: float, **fields) -> Limits:
    """Limits that judge a program by its CPU time: `cpu_s` seconds of its own CPU, and a wall clock of
    5 × cpu_s + 5 s that only stops programs that sleep or block (a busy program on a fifth of a core or
    more meets its CPU limit first), so that a verdict does not depend on how busy the machine is."""
    return Limits(cpu_s=float(cpu_s), wall_s=WALL_PER_CPU_S * float(cpu_s) + WALL_GRACE_S, **fields)


def run_many(jobs: Sequence[dict], *, limits: Limits = Limits(), workers: int | None = None,
             progress: bool = False) -> list[RunResult]:
    """Run jobs ({"source", optional "stdin", "argv"}) `workers` at a time; results in input order."""
    return run_many_sandboxed(jobs, limits=limits, workers=workers, progress=progress)


@functools.cache
def protections() -> dict[str, bool]:
    """Which layers this machine gives a program, found by running one (cached for the process)."""
    active = set(run_python("pass", limits=Limits(wall_s=20.0)).protections)
    return {layer: layer in active for layer in LAYERS}


def run_many_sandboxed(jobs: Sequence[dict], *, limits: Limits = Limits(), workers: int | None = None,
                       progress: bool = False, disable: frozenset[str] = frozenset()) -> list[RunResult]:
    from tqdm.auto import tqdm

    results: list[RunResult | None] = [None] * len(jobs)
    # Threads suffice: each one waits on its own child process, and the GIL is released while it does.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        futures = {pool.submit(run_sandboxed, job["source"], stdin=job.get("stdin", ""), limits=limits,
                               argv=job.get("argv", ()), disable=disable): i for i, job in enumerate(jobs)}
        for future in tqdm(as_completed(futures), total=len(jobs), disable=not progress, desc="sandbox"):
            results[futures[future]] = future.result()
    return results


def run_sandboxed(source: str, *, stdin: str | bytes = "", limits: Limits = Limits(), argv: Sequence[str] = (),
                  disable: frozenset[str] = frozenset()) -> RunResult:
    """run_python, with layers that may be switched off (`disable`: names from LAYERS, or "root" to
    take the unprivileged path as root). Only measurements and tests switch layers off."""
    data = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
    try:
        workdir = tempfile.mkdtemp(prefix="harness-sandbox-")
    except OSError as e:
        return RunResult("sandbox_error", f"could not create the program's directory: {e}", None, "", "", 0.0, ())
    try:
        Path(workdir, "main.py").write_text(source, encoding="utf-8")
        for _ in range(3):  # a layer that proves unusable here is dropped and the run redone
            result = _Run(workdir, data, limits, list(argv), frozenset(disable) | _unusable).execute()
            if result is not None:
                return result
        return RunResult("sandbox_error", "the sandbox kept failing to set up", None, "", "", 0.0, ())
    except OSError as e:
        return RunResult("sandbox_error", f"could not prepare the program: {e}", None, "", "", 0.0, ())
    finally:
        _remove_tree(workdir)


def scrubbed_env(workdir: str) -> dict[str, str]:
    """The program's whole environment: nothing of the harness's (tokens, paths) comes along."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir,
            "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
            # glibc reserves 64 MiB of address space per malloc arena, up to 8 per core, and RLIMIT_AS
            # counts reservations: without this, 1 GiB fits only ~14 threads.
            "MALLOC_ARENA_MAX": "2"}


class _Run:
    def __init__(self, workdir: str, stdin: bytes, limits: Limits, argv: list[str], disable: frozenset[str]):
        self.workdir, self.stdin, self.limits, self.argv, self.disable = workdir, stdin, limits, argv, disable
        self.cap = limits.output_kb * 1024
        self.exceeded: str | None = None  # "stdout" or "stderr" once one passes the cap
        self.backstop = False
        self.report: dict = {"layers": []}

    def execute(self) -> RunResult | None:
        """The run's result, or None when a layer proved unusable on this machine and it must be redone."""
        start = time.monotonic()
        status_read, status_write = os.pipe()
        lim = self.limits
        config = [f"status_fd={status_write}", f"wall_s={float(lim.wall_s)}", f"cpu_s={float(lim.cpu_s)}",
                  f"memory_mb={int(lim.memory_mb)}", f"nproc={int(lim.nproc)}", f"fsize_mb={int(lim.fsize_mb)}",
                  f"nofile={int(lim.nofile)}", f"disable={','.join(sorted(self.disable))}", f"site={_SITE_DIRS}",
                  "--", *self.argv]
        try:
            # A file, not a pipe, for stdin: the program reads it at its own pace and we never block on it.
            with tempfile.TemporaryFile() as stdin_file:
                stdin_file.write(self.stdin)
                stdin_file.seek(0)
                proc = subprocess.Popen(
                    [sys.executable, *_LAUNCH, *config],
                    stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.workdir,
                    env=scrubbed_env(self.workdir), start_new_session=True, pass_fds=(status_write,))
        except OSError as e:
            os.close(status_read)
            return RunResult("sandbox_error", f"could not start the sandbox: {e}", None, "", "",
                             time.monotonic() - start, ())
        finally:
            os.close(status_write)
        with proc:
            out, err = self._collect(proc, status_read, start)
        os.close(status_read)
        if self.report.get("unusable"):  # e.g. a user namespace without id maps: never again here
            _unusable.add(self.report["unusable"])
            log.warning("sandbox: %s; running without it from now on", self.report.get("error"))
            return None
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        status, reason, returncode = classify(self.report, stderr, wall_s=self.limits.wall_s,
                                              cpu_s=self.limits.cpu_s, output_exceeded=self.exceeded,
                                              backstop=self.backstop)
        layers = set(self.report["layers"]) | set(_PARENT_LAYERS)
        return RunResult(status, reason, returncode, stdout, stderr, time.monotonic() - start,
                         tuple(layer for layer in LAYERS if layer in layers), program_cpu_s(self.report))

    def _collect(self, proc: subprocess.Popen, status_read: int, start: float) -> tuple[bytes, bytes]:
        """Read stdout, stderr and the status pipe until all close; enforce the caps and the backstop.

        Output is read as it comes, so a program printing forever costs `output_kb`, not memory.
        """
        out, err = proc.stdout.fileno(), proc.stderr.fileno()
        kept = {out: bytearray(), err: bytearray()}
        received = {out: 0, err: 0}
        status_lines = bytearray()
        deadline = start + self.limits.wall_s + _SETUP_GRACE_S
        stage = "running"  # -> "stopping" (boot asked to stop) -> "killed" (SIGKILL sent) -> give up
        with selectors.DefaultSelector() as selector:
            for fd in (out, err, status_read):
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if stage == "killed":
                        break  # something outside our reach holds a pipe open: stop waiting for it
                    self.backstop = self.backstop or stage == "running"
                    self._kill(proc)
                    stage, deadline = "killed", time.monotonic() + _DRAIN_S
                    continue
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fd)
                    elif key.fd == status_read:
                        status_lines += chunk
                        self._parse_status(status_lines)
                    else:
                        received[key.fd] += len(chunk)
                        kept[key.fd] += chunk[: max(0, self.cap - len(kept[key.fd]))]
                        if received[key.fd] > self.cap and self.exceeded is None:
                            self.exceeded = "stdout" if key.fd == out else "stderr"
                            if stage == "running":  # boot stops the program and everything it started
                                _signal(proc.pid, signal.SIGTERM)
                                stage, deadline = "stopping", time.monotonic() + _STOP_GRACE_S
        try:
            proc.wait(timeout=_DRAIN_S)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            proc.wait()
        self._parse_status(status_lines, final=True)
        return bytes(kept[out]), bytes(kept[err])

    def _parse_status(self, buffer: bytearray, final: bool = False) -> None:
        """Fold complete lines from boot into self.report (layers accumulate, the rest overwrites)."""
        end = len(buffer) if final else buffer.rfind(b"\n") + 1
        for line in bytes(buffer[:end]).decode(errors="replace").splitlines():
            try:
                fields = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                continue
            self.report["layers"] += fields.pop("layers", [])
            self.report.update(fields)
        del buffer[:end]

    def _kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL boot's group (boot, init: with a PID namespace that is everything) and the program's."""
        for group in (proc.pid, self.report.get("program_pgid")):
            if group:
                _signal(-group, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_tree(path: str) -> None:
    """Remove the program's directory even when it made parts of it unreadable (chmod 000)."""
    def make_writable_and_retry(function, failed, _exc):
        for target in {os.path.dirname(failed), failed}:
            try:
                os.chmod(target, 0o700)
            except OSError:
                pass
        try:
            function(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
