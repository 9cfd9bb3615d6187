"""Runs first in the program's interpreter: `python -S -s -B -X utf8 -c "<this file>" GUARD SITE CLOCK main.py ARGS`.

Why -S and a prelude instead of plain `python main.py`: site costs every program ~13 ms, most of it
running .pth files (this repository's editable-install hook among them). Instead, SITE (the harness
interpreter's site-packages directories, joined by ":") goes on sys.path as it is, so that
numpy and friends import as they would for `python main.py`, and site's `exit()` and `quit()`, which
model-written code calls, are put back. main.py then runs as the real __main__ module: tracebacks,
`__name__`, `__file__`, `sys.argv` and pickling look as they would for `python main.py`.

GUARD is "-" normally. Where the kernel gives no network or filesystem confinement (macOS, old Linux)
it is "network", "writes" or "network,writes": a PEP 578 audit hook then refuses new sockets, writes
outside the program's directory and starting other programs (they would start without the hook). The
hook is a speed bump, not a wall: ctypes or any native code bypasses it; the run reports "audit_hook".

CLOCK is "FD:CPU_S". The program's CPU time counts from here, just before main.py is read: the CPU that
start-up took (fork, confinement, the interpreter, this file) is written to FD, boot's status pipe, which
is then closed, and an ITIMER_PROF timer ends the program with SIGPROF once it has used CPU_S more
seconds of CPU (all its threads together, by the exact clock of time.process_time()). The harness
subtracts that start-up from the CPU time the program's exit reports, so the limit and the measurement
are the program's own, however busy the machine is. The timer's handler is Python code, so it waits
while one C call runs; RLIMIT_CPU (boot) stops a program stuck there.

How the program ended is for the harness to see, not for the program to say: when main.py dies of an
exception, died_of picks the exit code by the exception's class and errno (MemoryError, EAGAIN...), so
that classify.py never reads stderr for a status. SIGXFSZ gets its default action back (Python ignores
it), so that a write past RLIMIT_FSIZE ends the program with a signal boot sees.
"""
import builtins
import sys

import _sitebuiltins


def guard(workdir, network, writes):
    """Install the audit hook; returns the exception class its network refusals raise (see died_of)."""
    import os

    class Blocked(PermissionError):
        """Printed as a plain PermissionError; died_of tells it apart by class, not by its text."""

    Blocked.__name__ = Blocked.__qualname__ = "PermissionError"
    Blocked.__module__ = "builtins"

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    path_events = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "os.setxattr", "os.removexattr", "shutil.rmtree"}
    exec_events = {"os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen"}
    home = os.path.realpath(workdir)

    def inside(path):
        if isinstance(path, int):  # an fd it already holds
            return True
        path = os.path.realpath(os.fsdecode(path))
        return path == home or path.startswith(home + os.sep) or path in ("/dev/null", "/dev/zero")

    def hook(event, args):
        if network and event == "socket.__new__":
            raise Blocked("network access is blocked by the sandbox")
        if not writes:
            return
        if event == "open" and args[0] is not None:
            mode, flags = args[1] or "", args[2] or 0
            if (any(c in mode for c in "wax+") or flags & write_flags) and not inside(args[0]):
                raise PermissionError(f"writing outside the sandbox directory is blocked: {args[0]!r}")
        elif event in path_events and args and not inside(args[0]):
            raise PermissionError(f"changing files outside the sandbox directory is blocked: {args[0]!r}")
        elif event in exec_events:
            raise PermissionError("starting programs is blocked by the sandbox")

    sys.addaudithook(hook)
    return Blocked


def start_clock(spec):
    import os
    import time

    import _signal

    fd, cpu_s = spec.split(":")
    limit, start = float(cpu_s), time.process_time()

    def on_cpu_timer(signum, frame):
        # ITIMER_PROF counts CPU in clock ticks, which on a busy machine run up to ~10 % ahead of the
        # exact count that the verdict uses: until that count reaches the limit, wait for the rest.
        left = limit - (time.process_time() - start)
        if left > 0:
            _signal.setitimer(_signal.ITIMER_PROF, max(left, 0.001))
            return
        _signal.signal(_signal.SIGPROF, _signal.SIG_DFL)
        _signal.raise_signal(_signal.SIGPROF)

    _signal.signal(_signal.SIGPROF, on_cpu_timer)  # a closure: run_main empties this module's globals
    # Python ignores SIGXFSZ; back to the default, a write past RLIMIT_FSIZE is a signal boot sees.
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    _signal.setitimer(_signal.ITIMER_PROF, limit)
    os.write(int(fd), (repr({"start_cpu_s": start}) + "\n").encode())  # boot's format: a dict literal a line
    os.close(int(fd))


def died_of(error, blocked):
    """The exit code that tells the harness which limit the program died of (classify.DIED_OF), or 1.

    Decided by the exception's class and errno, never by text, which the program could have printed
    itself. Network errors count when they are the cause of the last one too (urllib's URLError).
    """
    import errno
    import sys  # locals: run_main empties this module's globals before the program runs

    if isinstance(error, MemoryError):
        return 208
    if (isinstance(error, OSError) and error.errno == errno.EAGAIN) or (
            type(error) is RuntimeError and error.args == ("can't start new thread",)):
        return 209  # fork or thread creation over RLIMIT_NPROC
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return 210  # RLIMIT_FSIZE with SIGXFSZ ignored
    sock = sys.modules.get("_socket")
    for _ in range(8):
        if isinstance(error, blocked) or (sock is not None and isinstance(error, sock.gaierror)):
            return 211
        if isinstance(error, OSError) and (
                error.errno in (errno.EAFNOSUPPORT, errno.ENETUNREACH, errno.EHOSTUNREACH)  # seccomp, netns
                or (error.errno == errno.EACCES and error.filename is None and sock is not None)):  # Landlock
            return 211
        error = error.__cause__ or error.__context__
        if error is None:
            break
    return 1


def run_main(path, blocked):
    import os
    import sys  # locals: the loop below empties this module's globals

    exit_code = died_of
    main = sys.modules["__main__"]
    keep = ("__builtins__", "__name__", "__spec__", "__loader__", "__package__")
    for name in [n for n in vars(main) if n not in keep]:
        delattr(main, name)  # the program starts from a clean __main__, without this prelude's names
    main.__doc__ = None
    main.__file__ = os.path.abspath(path)
    sys.path[0] = os.path.dirname(main.__file__)
    with open(path, "rb") as f:  # bytes: compile honours a coding cookie
        source = f.read()
    try:
        exec(compile(source, main.__file__, "exec"), vars(main))
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - printed as Python would, minus this function's frame
        try:
            code = exit_code(e, blocked)
        except BaseException:  # noqa: BLE001 - out of memory again, say
            code = 208 if isinstance(e, MemoryError) else 1
        try:
            e = e.with_traceback(e.__traceback__.tb_next)  # the hook prints the exception's own traceback
            sys.excepthook(type(e), e, e.__traceback__)
        finally:
            sys.exit(code)


builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
builtins.help = _sitebuiltins._Helper()
_guard, _site, _clock = sys.argv[1:4]
sys.argv = sys.argv[4:]  # ["main.py", ARGS...], as for `python main.py ARGS...`
sys.path.extend(p for p in _site.split(":") if p)
_blocked = guard(".", "network" in _guard, "writes" in _guard) if _guard != "-" else ()
start_clock(_clock)
run_main(sys.argv[0], _blocked)
