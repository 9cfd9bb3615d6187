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
"""
import builtins
import sys

import _sitebuiltins


def guard(workdir, network, writes):
    import os

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
            raise PermissionError("network access is blocked by the sandbox")
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
    _signal.setitimer(_signal.ITIMER_PROF, limit)
    os.write(int(fd), (repr({"start_cpu_s": start}) + "\n").encode())  # boot's format: a dict literal a line
    os.close(int(fd))


def run_main(path):
    import os
    import sys  # locals: the loop below empties this module's globals

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
        e = e.with_traceback(e.__traceback__.tb_next)  # the hook prints the exception's own traceback
        sys.excepthook(type(e), e, e.__traceback__)
        sys.exit(1)


builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
builtins.help = _sitebuiltins._Helper()
_guard, _site, _clock = sys.argv[1:4]
sys.argv = sys.argv[4:]  # ["main.py", ARGS...], as for `python main.py ARGS...`
sys.path.extend(p for p in _site.split(":") if p)
if _guard != "-":
    guard(".", "network" in _guard, "writes" in _guard)
start_clock(_clock)
run_main(sys.argv[0])
