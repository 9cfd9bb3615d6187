"""Child side of the sandbox: build the cage, start the program in it, watch it, report.

The harness starts a fresh interpreter (`python -I -S`: nothing of the harness's threads or memory
comes along) that imports this module and calls main() with `key=value... -- ARGS`, in the program's
temp dir, with the scrubbed environment, in a new session, with status_fd open for our report: one
Python dict literal per line. Imported rather than run as a script so that its bytecode is cached;
no json, no signal module: their imports (re, enum) would cost more per run than all of this file.
The process tree:

    harness ── boot (supervisor) ── init (pid 1 of a new PID namespace) ── program
                                    └ without a PID namespace the supervisor starts the program itself

The supervisor enforces the wall clock and obeys SIGTERM (the harness's "stop"). init exists because
pid 1 of a namespace ignores signals it has no handler for (SIGXCPU included): the program must not be
pid 1. When init exits, the kernel kills everything left in the namespace, escaped daemons included.
Every layer is attempted where it may exist and reported when it took; a missing one is not an error.
"""
import _signal  # the C module under signal.py, whose enum wrappers we do not need
import math
import os
import resource
import sys
import time

LINUX = sys.platform.startswith("linux")
if LINUX:  # siblings: the launcher put this directory on sys.path
    import kernel
    import landlock
    import seccomp

HERE = os.path.dirname(os.path.abspath(__file__))
UID_BASE = 0x7F000000  # the program runs as UID_BASE + boot's pid when we are root: a uid no one else has


def report(fd: int, **fields) -> None:
    os.write(fd, (repr(fields) + "\n").encode())  # one short write: atomic on a pipe


def parse_config(args: list[str]) -> dict:
    end = args.index("--")
    config = dict(arg.split("=", 1) for arg in args[:end])
    numbers = {k: float(v) if k in ("wall_s", "cpu_s") else int(v) for k, v in config.items()
               if k not in ("disable", "site")}
    return {**numbers, "disable": [x for x in config["disable"].split(",") if x], "site": config["site"],
            "argv": args[end + 1:]}


class Boot:
    def __init__(self, config: dict):
        self.cfg = config
        self.off = set(config["disable"])  # layers switched off for measurement or tests
        self.status = config["status_fd"]
        self.workdir = os.getcwd()
        self.layers: list[str] = []
        # As root, the program always runs as a uid of its own, or not at all: uid 0 keeps powers no other
        # layer takes away (reboot, modules, chmod of root's files) and RLIMIT_NPROC never binds it.
        self.uid = UID_BASE + os.getpid() if os.geteuid() == 0 else None
        # "root" switched off: drop to that uid before anything else and take the unprivileged path
        # (user namespace...), so tests can exercise what ordinary users get on this machine.
        self.rehearse = LINUX and self.uid is not None and "root" in self.off

    def want(self, layer: str) -> bool:
        return LINUX and layer not in self.off

    def try_layer(self, layer: str, action) -> bool:
        if not self.want(layer):
            return False
        try:
            action()
        except OSError:
            return False
        self.layers.append(layer)
        return True

    # -- namespaces, entered by the supervisor so that init and the program start inside them --------

    def enter_namespaces(self) -> None:
        if self.uid is not None:  # root
            if self.try_layer("mount_namespace", lambda: kernel.unshare(kernel.CLONE_NEWNS)):
                kernel.mount("none", "/", None, kernel.MS_REC | kernel.MS_PRIVATE)  # nothing leaks to the host
                self.expose_interpreter()
            if not self.interpreter_reachable():
                raise RefusedAsRoot(
                    f"{sys.executable} lies under a directory other users cannot enter, and no mount namespace "
                    "is available to expose it to the sandbox's unprivileged uid; refusing to run untrusted "
                    "code as root (run the harness as an ordinary user, or use an interpreter outside it)")
            os.chown(self.workdir, self.uid, self.uid)
            if self.rehearse:
                self.drop_privileges()
                # A uid change leaves us non-dumpable, which makes /proc/self/uid_map root's: undo that.
                kernel.prctl(kernel.PR_SET_DUMPABLE, 1, 0, 0, 0)
        if os.geteuid() != 0 and self.want("user_namespace"):
            uid, gid = os.getuid(), os.getgid()
            if self.try_layer("user_namespace", lambda: kernel.unshare(kernel.CLONE_NEWUSER)):
                try:  # map only ourselves; fails e.g. under AppArmor's userns restriction
                    for name, line in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                                       ("gid_map", f"{gid} {gid} 1")):
                        with open(f"/proc/self/{name}", "w") as f:
                            f.write(line)
                except OSError as e:
                    raise UnusableUserNamespace(str(e)) from None
                self.try_layer("mount_namespace", lambda: kernel.unshare(kernel.CLONE_NEWNS))
        self.try_layer("ipc_namespace", self.enter_ipc_namespace)
        self.try_layer("net_namespace", lambda: kernel.unshare(kernel.CLONE_NEWNET))
        self.try_layer("pid_namespace", lambda: kernel.unshare(kernel.CLONE_NEWPID))

    def enter_ipc_namespace(self) -> None:
        """System V objects and POSIX message queues of the run's own: when its last process exits, the
        kernel destroys them all, and no other run (or host process) can see or attach them.

        Inside, the namespace's own limits shrink (as root of it, we may): shared memory counts no more
        than memory_mb in total (segments outlive shmdt and RLIMIT_AS does not count them), and a few
        queues and semaphore sets instead of 32000 each (kernel memory that nothing else limits).
        A limit that cannot be written fails the layer, and seccomp refuses the calls instead.
        """
        kernel.unshare(kernel.CLONE_NEWIPC)
        shm = self.cfg["memory_mb"] << 20
        for name, value in (("shmmax", shm), ("shmall", shm // os.sysconf("SC_PAGE_SIZE")), ("shmmni", 32),
                            ("msgmni", 32), ("sem", "250 8000 32 32")):
            with open(f"/proc/sys/kernel/{name}", "w") as f:
                f.write(f"{value}\n")

    def interpreter_paths(self) -> list[str]:
        """Directories the program's interpreter reads: its installation and its venv, if any."""
        paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix,
                                               os.path.dirname(os.path.realpath(sys.executable)))}
        # Under -S, sys.prefix is not the venv yet (site sets it): find pyvenv.cfg as PEP 405 does.
        bin_dir = os.path.dirname(os.path.abspath(sys.executable))
        for venv in (bin_dir, os.path.dirname(bin_dir)):
            if os.path.isfile(os.path.join(venv, "pyvenv.cfg")):
                paths.add(os.path.realpath(venv))
                break
        return sorted(p for p in paths if not any(p.startswith(q + os.sep) for q in paths))

    def interpreter_reachable(self) -> bool:
        return all(_closed_ancestor(p) is None for p in self.interpreter_paths())

    def expose_interpreter(self) -> None:
        """Let an unprivileged uid reach an interpreter kept under a root-only directory (pyenv in /root).

        In our private mount namespace, that directory gets an empty tmpfs on top holding a bind mount
        of just the interpreter's tree, at the same path: sys.executable still works, and the rest of
        the directory (keys, histories) stays out of sight.
        """
        covered = set()
        for path in self.interpreter_paths():
            closed = _closed_ancestor(path)
            if closed is None or closed == path:
                continue
            keep = os.open(path, os.O_PATH | os.O_CLOEXEC)  # the real tree, before the tmpfs hides it
            try:
                if closed not in covered:
                    kernel.mount("tmpfs", closed, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=755,size=64k")
                    covered.add(closed)
                os.makedirs(path, mode=0o755, exist_ok=True)
                kernel.mount(f"/proc/self/fd/{keep}", path, None, kernel.MS_BIND | kernel.MS_REC)
            finally:
                os.close(keep)

    def drop_privileges(self) -> None:
        os.setgroups([])
        os.setgid(self.uid)  # as root, setgid/setuid set the real, effective and saved ids alike
        os.setuid(self.uid)  # and leaving uid 0 drops every capability

    # -- the program's own process ------------------------------------------------------------------

    def exec_program(self) -> None:
        """In the forked child: the last layers, then exec the program. Never returns."""
        try:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
            for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
                _signal.signal(sig, _signal.SIG_DFL)
            os.setpgid(0, 0)  # its own group: a killpg(0) by the program reaches only itself
            layers = []
            ruleset = None
            with open(os.path.join(HERE, "prelude.py")) as f:  # while we can still read it
                self.prelude = f.read()
            abi = landlock.abi_version() if self.want("landlock_fs") else 0
            if abi:  # built while we may still open anything; enforced after the uid drop
                ruleset, landlock_layers = landlock.build_ruleset(
                    abi, self.landlock_rules(), net=self.want("landlock_net"), scope=self.want("landlock_signal"))
            if self.uid is not None:
                if os.geteuid() == 0:
                    self.drop_privileges()
                layers.append("unprivileged_uid")
            if os.geteuid() == 0 or os.getuid() == 0:  # the last word on it: never exec the program as root
                raise RefusedAsRoot("the program would still run as root")
            layers += self.set_limits()
            if LINUX:
                kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid gains; required below
                layers.append("no_new_privs")
            if ruleset is not None:
                landlock.restrict_self(ruleset)
                layers += landlock_layers
            if seccomp.supported():  # SysV IPC only where the run has no IPC namespace of its own
                wanted = {layer for layer in seccomp.LAYERS if self.want(layer)}
                if "ipc_namespace" in self.layers:
                    wanted.discard("seccomp_ipc")
                layers += seccomp.install(wanted)
            argv, guarded = self.program_argv(set(self.layers) | set(layers))
            if guarded:
                layers.append("audit_hook")
            report(self.status, layers=layers)
            os.closerange(3, self.status)
            os.closerange(self.status + 1, 1 << 16)
            os.set_inheritable(self.status, True)  # for the prelude's one report; it closes it before main.py
            os.execve(sys.executable, argv, os.environ)
        except BaseException as e:  # noqa: BLE001 - anything here is our failure, not the program's
            report(self.status, error=f"program setup failed: {type(e).__name__}: {e}")
        os._exit(127)

    def program_argv(self, layers: set) -> tuple[list[str], bool]:
        """The program's command line (see prelude.py), and whether the audit-hook guard is on.

        Not -I: it implies -E, which would ignore PYTHONHASHSEED; the environment is ours anyway.
        The prelude travels inline: the program's uid and Landlock may not reach this directory.
        """
        weak = [name for name, missing in (("network", not layers & {"net_namespace", "seccomp_sockets"}),
                                           ("writes", "landlock_fs" not in layers)) if missing]
        guarded = bool(weak) and "audit_hook" not in self.off
        guard = ",".join(weak) if guarded else "-"
        clock = f"{self.status}:{self.cfg['cpu_s']!r}"
        return [sys.executable, "-S", "-s", "-B", "-X", "utf8", "-c", self.prelude, guard, self.cfg["site"], clock,
                "main.py", *self.cfg["argv"]], guarded

    def landlock_rules(self) -> list[tuple[str, int]]:
        """Reads: what the interpreter and its libraries need. Writes: the temp dir and /dev/null."""
        site = [p for p in self.cfg["site"].split(":") if p]
        read = [*self.interpreter_paths(), *site, *_loaded_library_dirs(), "/usr", "/lib", "/lib64", "/lib32",
                "/bin", "/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group",
                "/sys/devices/system/cpu", "/dev/urandom", "/dev/random"]
        return ([(p, landlock.READ) for p in read] + [(self.workdir, -1)]
                + [(p, landlock.READ | landlock.WRITE_FILE | landlock.TRUNCATE | landlock.IOCTL_DEV)
                   for p in ("/dev/null", "/dev/zero", "/dev/full")])

    def set_limits(self) -> list[str]:
        cfg = self.cfg
        # The prelude's timer stops the program at cpu_s of its own CPU. RLIMIT_CPU counts from the fork and
        # binds every process of the program: SIGXCPU a second beyond, SIGKILL a second after that.
        cpu = math.ceil(cfg["cpu_s"]) + 1
        limits = [(resource.RLIMIT_CPU, cpu, cpu + 1),
                  (resource.RLIMIT_FSIZE, cfg["fsize_mb"] << 20, None), (resource.RLIMIT_CORE, 0, None),
                  (resource.RLIMIT_NOFILE, cfg["nofile"], None)]
        if hasattr(resource, "RLIMIT_AS"):
            limits.append((resource.RLIMIT_AS, cfg["memory_mb"] << 20, None))
        refused = [which for which, soft, hard in limits if not _set_rlimit(which, soft, hard)]
        layers = [] if refused else ["rlimits"]  # e.g. macOS refuses RLIMIT_AS
        # RLIMIT_NPROC counts the tasks of a (user namespace, real uid) pair and never binds uid 0.
        if "user_namespace" in self.layers:  # boot and init are in the namespace too, and count
            if _set_rlimit(resource.RLIMIT_NPROC, cfg["nproc"] + 1 + ("pid_namespace" in self.layers), None):
                layers.append("nproc_limit")
        elif self.uid is not None:  # only the program's processes have this uid
            if _set_rlimit(resource.RLIMIT_NPROC, cfg["nproc"], None):
                layers.append("nproc_limit")
        elif os.geteuid() != 0 and LINUX:
            # Shared with every process of this user: allow what they already run, plus the program's.
            _set_rlimit(resource.RLIMIT_NPROC, _tasks_of(os.getuid()) + cfg["nproc"], None)
        return layers

    # -- supervisor and init --------------------------------------------------------------------------

    def run(self) -> None:
        os.set_inheritable(self.status, False)
        os.umask(0o022)
        _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGCHLD, _signal.SIGTERM})  # for sigtimedwait
        self.enter_namespaces()
        pidns = "pid_namespace" in self.layers
        if LINUX:
            # Set after the namespaces: changing credentials clears it. Harness gone: clean up and leave.
            kernel.prctl(kernel.PR_SET_PDEATHSIG, _signal.SIGTERM, 0, 0, 0)
            if not pidns:
                kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come to us, not to pid 1
                self.layers.append("subreaper")
        deadline = time.monotonic() + self.cfg["wall_s"]
        child = os.fork()
        if child == 0:
            self.be_init() if pidns else self.exec_program()
        report(self.status, layers=self.layers, **({} if pidns else {"program_pgid": child}))
        outcome = _wait_until(child, deadline)
        if isinstance(outcome, str):  # "timeout" or "terminated"
            report(self.status, stopped=outcome)
            os.kill(child, _signal.SIGKILL)  # with a PID namespace, init's death takes everything along
        elif not pidns:
            status, usage = outcome
            report(self.status, exit=status, cpu_s=usage.ru_utime + usage.ru_stime)
        if pidns:
            _reap(child)
        else:
            _kill_descendants(child)

    def be_init(self) -> None:
        """pid 1 of the new namespace: start the program, reap orphans, report its end, exit."""
        try:
            kernel.prctl(kernel.PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0)
            layers = []
            if "mount_namespace" in self.layers and self.want("private_proc"):
                try:  # /proc of this namespace only: host processes vanish from view
                    kernel.mount("proc", "/proc", "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
                    layers.append("private_proc")
                except OSError:
                    pass
            program = os.fork()
            if program == 0:
                self.layers += layers
                self.exec_program()
            report(self.status, layers=layers)
            while True:
                pid, status, usage = os.wait4(-1, 0)
                if pid == program:
                    report(self.status, exit=status, cpu_s=usage.ru_utime + usage.ru_stime)
                    break
        except BaseException as e:  # noqa: BLE001
            report(self.status, error=f"sandbox init failed: {type(e).__name__}: {e}")
        os._exit(0)


class RefusedAsRoot(Exception):
    """We are root and cannot drop to the sandbox uid: no sandbox is better than root's powers."""


class UnusableUserNamespace(Exception):
    """unshare(CLONE_NEWUSER) worked but the id maps could not be written: this process is now useless."""


def _closed_ancestor(path: str) -> str | None:
    """The outermost directory on the way to `path` that other users may not enter."""
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:i])
        try:
            if not os.stat(prefix).st_mode & 0o001:
                return prefix
        except OSError:
            return prefix
    return None


def _loaded_library_dirs() -> set[str]:
    # The same binary runs the program: its shared libraries' directories (nix, conda...) must stay readable.
    dirs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                if path.startswith("/") and ".so" in os.path.basename(path):
                    dirs.add(os.path.dirname(path))
    except OSError:
        pass
    return dirs


def _set_rlimit(which: int, soft: int, hard: int | None) -> bool:
    hard = soft if hard is None else hard
    try:
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:  # without privilege the hard limit only goes down
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))
    except (OSError, ValueError):
        return False
    return True


def _tasks_of(uid: int) -> int:
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            pass
    return total


def _wait_until(child: int, deadline: float):
    """(wait status, rusage) of `child`, or "timeout" / "terminated"; reaps orphans along the way.

    SIGCHLD and SIGTERM are blocked, so sigtimedwait sleeps until either comes or time is up.
    """
    while True:
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == child:
            return status, usage
        if pid:
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        if hasattr(_signal, "sigtimedwait"):
            info = _signal.sigtimedwait({_signal.SIGCHLD, _signal.SIGTERM}, remaining)
            if info is not None and info.si_signo == _signal.SIGTERM:
                return "terminated"
        else:  # macOS: poll
            if _signal.SIGTERM in _signal.sigpending():
                return "terminated"
            time.sleep(min(remaining, 0.005))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _kill_descendants(program: int) -> None:
    """Without a PID namespace: kill the program's group, then every orphan that came to us (subreaper).

    Killing a child hands its own children to us, hence the loop; zombies are among the children too.
    """
    try:
        os.killpg(program, _signal.SIGKILL)
    except OSError:
        pass
    for _ in range(1000):
        children = _children_of(os.getpid())
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, _signal.SIGKILL)
            except OSError:
                pass
        for pid in children:
            _reap(pid)


def _children_of(parent: int) -> list[int]:
    found = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            if int(stat.rsplit(b")", 1)[1].split()[1]) == parent:  # the field after the state
                found.append(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    return found


def main() -> None:
    config = parse_config(sys.argv[1:])
    status = config["status_fd"]
    try:
        Boot(config).run()
    except UnusableUserNamespace as e:
        report(status, unusable="user_namespace", error=f"user namespace unusable: {e}")
        os._exit(125)
    except RefusedAsRoot as e:
        report(status, error=f"refused: {e}")
        os._exit(125)
    except BaseException as e:  # noqa: BLE001
        report(status, error=f"sandbox setup failed: {type(e).__name__}: {e}")
        os._exit(125)
    os._exit(0)  # nothing to flush: skip the interpreter's teardown
