"""The sandbox against hostile programs, with every layer this machine has, then with layers removed.

Each hostile program gets, in argv: a sentinel directory it attacks, a unique token (it is in the
command line of every process the program starts, and in the name of every file it tries to plant
outside its directory), the harness's pid, the harness's cwd and a localhost port the harness listens
on. After each run: exact status, sentinel unchanged, no planted file, no process left with the token.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from harness.sandbox import LAYERS, Limits, cpu_time_limits, protections, run_many, run_python
from harness.sandbox import runner
from harness.sandbox.classify import DIED_OF, classify
from harness.sandbox.runner import run_sandboxed

AVAILABLE = protections()
QUICK = Limits(wall_s=5.0, cpu_s=5.0, memory_mb=256)
SECRET = f"secret-{uuid.uuid4().hex}"
UID_BASE = 0x7F000000  # boot.UID_BASE: sandbox uids are UID_BASE + a pid (boot runs only as a child)


def needs(*layers: str):
    missing = [layer for layer in layers if not AVAILABLE[layer]]
    return pytest.mark.skipif(bool(missing), reason=f"this machine lacks {', '.join(missing)}")


@pytest.fixture(scope="module", autouse=True)
def private_tempdir(tmp_path_factory):
    """Sandbox dirs go to a directory of our own, so that leftovers are ours to count at the end.

    World-traversable (unlike pytest's tmp_path), so that a sentinel in it is guarded by its own
    permissions and the sandbox's layers, not by an unreachable parent directory.
    """
    tmp_path_factory.getbasetemp()  # pytest's own base stays where it was
    base = Path(tempfile.mkdtemp(prefix="sandbox-tests-"))
    base.chmod(0o755)
    saved, tempfile.tempdir = tempfile.tempdir, str(base)
    os.environ["HARNESS_TEST_SECRET"] = SECRET
    yield base
    tempfile.tempdir = saved
    os.environ.pop("HARNESS_TEST_SECRET", None)
    leftovers = sorted(base.glob("harness-sandbox-*"))
    shutil.rmtree(base)
    assert leftovers == [], "the sandbox left its directories behind"


class Target:
    """What a hostile program attacks, and the checks that it changed nothing."""

    def __init__(self, root: Path):
        self.sentinel = root / "sentinel"
        (self.sentinel / "sub").mkdir(parents=True)
        (self.sentinel / "keep.txt").write_text("precious\n")
        (self.sentinel / "sub" / "deep.txt").write_text("also precious\n")
        self.token = f"sbxtok{uuid.uuid4().hex[:12]}"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.planted = [Path.cwd() / f"{self.token}.txt", Path("/tmp") / f"{self.token}.txt",
                        Path("/dev/shm") / f"{self.token}.txt"]
        self.before = self.snapshot()

    @property
    def argv(self) -> list[str]:
        return [str(self.sentinel), self.token, str(os.getpid()), str(Path.cwd()),
                str(self.listener.getsockname()[1])]

    def snapshot(self) -> dict:
        state = {}
        for path in sorted(self.sentinel.rglob("*")) + [self.sentinel]:
            st = path.lstat()
            digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else None
            state[str(path)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, digest)
        return state

    def assert_untouched(self) -> None:
        assert self.snapshot() == self.before, "the sentinel directory changed"
        for path in self.planted:
            assert not path.exists(), f"the program planted {path}"
        with pytest.raises(BlockingIOError):
            self.listener.accept()  # nobody connected to the harness's port
        assert processes_with(self.token) == [], "a process of the program survived it"
        self.listener.close()


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.fixture
def target(private_tempdir):
    t = Target(private_tempdir / uuid.uuid4().hex)
    yield t
    t.assert_untouched()


# name: (source, limits, expected status, layers it needs). argv: sentinel token harness_pid harness_cwd port
HOSTILE = {
    "busy_loop_wall": ("while True: pass", Limits(wall_s=1.0, cpu_s=5.0), "timeout", ()),
    "busy_loop_cpu": ("while True: pass", Limits(wall_s=15.0, cpu_s=1.0), "cpu_limit", ()),
    "sleep_forever": ("import time\ntime.sleep(10**6)", Limits(wall_s=1.0), "timeout", ()),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", QUICK, "process_limit", ("nproc_limit",)),
    "thread_bomb": ("import threading, time\nwhile True:\n"
                    "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
                    QUICK, "process_limit", ("nproc_limit",)),
    "allocate_forever": ("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))",
                         QUICK, "memory_limit", ()),
    "huge_file": ("with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)",
                  Limits(wall_s=5.0, fsize_mb=1), "file_size_limit", ()),
    "huge_file_sigxfsz": ("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
                          "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)",
                          Limits(wall_s=5.0, fsize_mb=1), "file_size_limit", ()),
    "segfault": ("import ctypes\nctypes.string_at(0)", QUICK, "signal", ()),
    "print_forever": ("while True:\n    print('spam' * 100)", Limits(wall_s=5.0, output_kb=64),
                      "output_limit", ()),
    "stderr_forever": ("import sys\nwhile True:\n    sys.stderr.write('spam' * 100)",
                       Limits(wall_s=5.0, output_kb=64), "output_limit", ()),
    "tcp_internet": ("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)", QUICK,
                     "network_blocked", ()),
    "tcp_harness_localhost": ("import socket, sys\nsocket.create_connection(('127.0.0.1', int(sys.argv[5])), "
                              "timeout=3)", QUICK, "network_blocked", ()),
    "udp_dns": ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "s.sendto(b'x', ('1.1.1.1', 53))\ns.settimeout(2)\ns.recv(1)", QUICK, "network_blocked", ()),
    "delete_sentinel": ("import shutil, sys\nshutil.rmtree(sys.argv[1])", QUICK, "error", ()),
    "overwrite_sentinel": ("import sys\nopen(sys.argv[1] + '/keep.txt', 'w').write('pwned')", QUICK, "error", ()),
    "chmod_sentinel": ("import os, sys\nos.chmod(sys.argv[1], 0o777)", QUICK, "error", ()),
    "plant_in_harness_cwd": ("import sys\nopen(sys.argv[4] + '/' + sys.argv[2] + '.txt', 'w').write('x')",
                             QUICK, "error", ()),
    "plant_in_tmp": ("import sys\nopen('/tmp/' + sys.argv[2] + '.txt', 'w').write('x')", QUICK, "error",
                     ("landlock_fs",)),
    "plant_in_dev_shm": ("import sys\nopen('/dev/shm/' + sys.argv[2] + '.txt', 'w').write('x')", QUICK,
                         "error", ("landlock_fs",)),
    "read_etc_shadow": ("print(open('/etc/shadow').read())", QUICK, "error", ()),
    "kill_parent": ("import os\nos.kill(os.getppid(), 9)\nprint('parent killed?')", QUICK,
                    "error", ("landlock_signal",)),
    "kill_harness_by_pid": ("import os, sys\nos.kill(int(sys.argv[3]), 9)", QUICK, "error", ()),
    "kill_everything": ("import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass  # nothing it may signal\n"
                        "print('still here')", QUICK, "ok", ()),
    "ctypes_kill_and_socket": (
        "import ctypes, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.kill(int(sys.argv[3]), 9) == -1\nassert libc.socket(2, 1, 0) == -1\n"
        "assert libc.setuid(0) == -1 or __import__('os').getuid() != 0\nprint('contained')",
        QUICK, "ok", ()),
    "escape_by_double_fork": (
        "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[2]])\n"
        "    os._exit(0)\ntime.sleep(0.5)\nprint('parent leaves')", QUICK, "ok", ()),
    "escape_then_hang": (
        "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n"
        "    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[2]])\n"
        "time.sleep(60)", Limits(wall_s=1.0), "timeout", ()),
    "close_stdout_and_spin": ("import os, time\nos.close(1)\nos.close(2)\nwhile True: time.sleep(0.01)",
                              Limits(wall_s=1.0), "timeout", ()),
    "sys_exit_3": ("import sys\nsys.exit(3)", QUICK, "error", ()),
    "syntax_error": ("def broken(:\n    pass", QUICK, "error", ()),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program(name, target):
    source, limits, expected, layers = HOSTILE[name]
    missing = [layer for layer in layers if not AVAILABLE[layer]]
    if missing:
        pytest.skip(f"this machine lacks {', '.join(missing)}")
    result = run_python(source, limits=limits, argv=target.argv)
    assert result.status == expected, (result.reason, result.stderr[-2000:])
    assert result.wall_s < limits.wall_s + 3
    if name == "sys_exit_3":
        assert result.returncode == 3
    if name == "syntax_error":
        assert result.reason.startswith("SyntaxError")
    if name in ("busy_loop_cpu", "huge_file_sigxfsz", "segfault"):
        assert result.returncode < 0
    if expected == "error" and name not in ("sys_exit_3", "syntax_error"):
        assert "Error" in result.reason, result.reason  # refused by the kernel, not a crash of ours
    if name in ("print_forever", "stderr_forever"):
        stream = result.stdout if name == "print_forever" else result.stderr
        assert len(stream.encode()) == 64 * 1024
    if name == "kill_everything":
        assert result.stdout == "still here\n"
    if name == "ctypes_kill_and_socket":
        assert result.stdout == "contained\n"
    # the harness survived whatever the program tried, and the sandbox still works
    assert run_python("print('after')", limits=QUICK).stdout == "after\n"


def test_environment_secret_does_not_leak(target):
    source = """
import os, sys
print(dict(os.environ))
for pid in (os.getppid(), 1, int(sys.argv[3])):
    for name in ("environ", "cmdline"):
        try:
            print(open(f"/proc/{pid}/{name}", "rb").read())
        except OSError as e:
            print(pid, name, "refused:", e)
"""
    result = run_python(source, limits=QUICK, argv=target.argv)
    assert result.status == "ok", result.stderr
    assert os.environ["HARNESS_TEST_SECRET"] == SECRET
    assert SECRET not in result.stdout
    assert "refused" in result.stdout


def test_program_started_by_the_program_is_confined_too(target):
    # A grandchild interpreter inherits every layer: it cannot write the sentinel either.
    source = ("import subprocess, sys\n"
              "subprocess.run([sys.executable, '-c', 'import sys; open(sys.argv[1] + \"/keep.txt\", \"w\")',"
              " sys.argv[1]], check=True)")
    result = run_python(source, limits=QUICK, argv=target.argv)
    assert result.status == "error" and "CalledProcessError" in result.reason
    assert "PermissionError" in result.stderr


# -- the same attacks with layers taken away: each fallback must still hold on its own -----------------

NETWORK_ALONE = {  # the one layer left to stop the connection -> what the others switched off
    "net_namespace": {"seccomp_sockets", "landlock_net", "audit_hook"},
    "seccomp_sockets": {"net_namespace", "landlock_net", "audit_hook"},
    "landlock_net": {"net_namespace", "seccomp_sockets", "audit_hook"},
    "audit_hook": {"net_namespace", "seccomp_sockets", "landlock_net"},
}


@pytest.mark.parametrize("layer", list(NETWORK_ALONE))
def test_network_blocked_by_each_layer_alone(layer, target):
    if layer != "audit_hook" and not AVAILABLE[layer]:
        pytest.skip(f"this machine lacks {layer}")
    source = HOSTILE["tcp_harness_localhost"][0]
    result = run_sandboxed(source, limits=QUICK, argv=target.argv, disable=frozenset(NETWORK_ALONE[layer]))
    assert result.status == "network_blocked", (result.reason, result.stderr)
    assert layer in result.protections


def test_caught_network_error_is_ok():
    source = "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n" \
             "except OSError as e:\n    print('offline')"
    result = run_python(source, limits=QUICK)
    assert (result.status, result.stdout) == ("ok", "offline\n")


@needs("unprivileged_uid")
@pytest.mark.parametrize("attack", ["delete_sentinel", "overwrite_sentinel", "chmod_sentinel",
                                    "plant_in_harness_cwd", "read_etc_shadow", "kill_harness_by_pid"])
def test_files_and_harness_safe_without_landlock(attack, target):
    # Only the unprivileged uid (plain file permissions) stands between the program and root's files.
    result = run_sandboxed(HOSTILE[attack][0], limits=QUICK, argv=target.argv,
                           disable=frozenset({"landlock_fs", "audit_hook"}))
    assert "landlock_fs" not in result.protections
    assert result.status == "error" and "Error" in result.reason, result.reason


def test_environment_secret_does_not_leak_without_landlock(target):
    source = "import sys\nprint(open(f'/proc/{sys.argv[3]}/environ', 'rb').read())"
    result = run_sandboxed(source, limits=QUICK, argv=target.argv, disable=frozenset({"landlock_fs"}))
    assert SECRET not in result.stdout
    assert result.status == "error"


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root harness can be asked to run programs as root")
def test_root_drops_to_its_own_uid_or_refuses():
    # A harmless program only: without a mount namespace an interpreter under /root is unreachable for
    # the sandbox uid, and the one alternative, running the program as root, must be refused.
    result = run_sandboxed("import os\nprint(os.getuid())", disable=frozenset({"mount_namespace"}))
    if result.status == "ok":  # this interpreter needs no help to be reachable
        assert int(result.stdout) >= UID_BASE and "unprivileged_uid" in result.protections
    else:
        assert result.status == "sandbox_error" and result.reason.startswith("refused:"), result.reason


@pytest.mark.parametrize("attack", ["escape_by_double_fork", "escape_then_hang", "fork_bomb"])
def test_descendants_die_without_pid_namespace(attack, target):
    source, limits, expected, _ = HOSTILE[attack]
    result = run_sandboxed(source, limits=limits, argv=target.argv, disable=frozenset({"pid_namespace"}))
    assert "pid_namespace" not in result.protections and "subreaper" in result.protections
    assert result.status == expected, result.reason


@needs("unprivileged_uid")
@pytest.mark.parametrize("attack", ["fork_bomb", "thread_bomb", "escape_then_hang", "kill_parent",
                                    "kill_harness_by_pid", "tcp_harness_localhost", "overwrite_sentinel"])
def test_unprivileged_user_path(attack, target):
    # "root" off: drop to a plain uid first, then build the cage as an ordinary user would (user ns).
    source, limits, expected, _ = HOSTILE[attack]
    result = run_sandboxed(source, limits=limits, argv=target.argv, disable=frozenset({"root"}))
    if "user_namespace" not in result.protections:
        pytest.skip("unprivileged user namespaces are not available here")
    assert {"pid_namespace", "net_namespace", "nproc_limit"} <= set(result.protections)
    assert result.status == expected, result.reason


@pytest.mark.parametrize("disable", [frozenset(), frozenset({"root"})], ids=["root", "unprivileged"])
def test_process_limit_is_exact(disable):
    source = ("import os, time\nn = 1\ntry:\n    while True:\n        if os.fork() == 0:\n"
              "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    print(n)")
    result = run_sandboxed(source, limits=Limits(wall_s=5.0, nproc=12), disable=disable)
    if "nproc_limit" not in result.protections:
        pytest.skip("no process-count limit on this path here")
    assert (result.status, result.stdout) == ("ok", "12\n")


# -- state that outlives a run, host sockets, kernel surface, forged statuses (issue 11) ----------------

LIBC = "import ctypes, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
SYSV_KEY = 0x5B000000 + os.getpid() % 0xFFFFFF  # ours alone on this machine while the tests run
SYSV_LEAVE = LIBC + f"""
key = {SYSV_KEY}
shm = libc.shmget(key, 1 << 20, 0o1666)
if shm >= 0:
    libc.shmat.restype = ctypes.c_void_p
    ctypes.memmove(libc.shmat(shm, None, 0), sys.argv[2].encode(), 20)  # the token, for a later run to read
q = libc.msgget(key, 0o1666)
sem = libc.semget(key, 1, 0o1666)
print([shm, q, sem], ctypes.get_errno())
"""
SYSV_FIND = LIBC + f"""
key = {SYSV_KEY}
print([libc.shmget(key, 0, 0), libc.msgget(key, 0), libc.semget(key, 0, 0)])
"""


def sysv_objects(key: int) -> list[str]:
    """The host IPC namespace's objects with `key`, as /proc/sysvipc lists them (key in decimal)."""
    return [line for name in ("shm", "msg", "sem") for line in Path(f"/proc/sysvipc/{name}").read_text().splitlines()
            if line.split()[0] == str(key)]


@pytest.mark.parametrize("disable, layer", [(frozenset(), "ipc_namespace"),
                                            (frozenset({"ipc_namespace"}), "seccomp_ipc"),
                                            (frozenset({"root"}), None)], ids=["namespace", "seccomp", "unprivileged"])
def test_sysv_ipc_does_not_outlive_the_run(disable, layer, target):
    # One run leaves a shared-memory segment (holding its token), a queue and a semaphore set behind;
    # the host sees none of them, and the next run cannot find them.
    assert sysv_objects(SYSV_KEY) == []
    left = run_sandboxed(SYSV_LEAVE, limits=QUICK, argv=target.argv, disable=disable)
    kept = set(left.protections) & {"ipc_namespace", "seccomp_ipc"}
    if layer is not None and layer not in kept:
        pytest.skip(f"this machine lacks {layer}")
    assert kept, "neither an IPC namespace nor seccomp's refusal: SysV IPC reaches the host"
    assert left.status == "ok", (left.reason, left.stderr)
    made = eval(left.stdout.split("]")[0] + "]")
    if "ipc_namespace" in kept:
        assert all(i >= 0 for i in made), left.stdout  # allowed, in a namespace of its own
    else:
        assert made == [-1, -1, -1] and left.stdout.split()[-1] == str(errno.EPERM), left.stdout
    assert sysv_objects(SYSV_KEY) == [], "a SysV object outlived the run"
    found = run_sandboxed(SYSV_FIND, limits=QUICK, disable=disable)
    assert (found.status, found.stdout) == ("ok", "[-1, -1, -1]\n"), (found.reason, found.stdout)


def test_sysv_shared_memory_is_capped_by_the_memory_limit():
    # In its namespace a run may not park more shared memory than its memory limit (RLIMIT_AS does not count
    # detached segments): 300 MiB fits 256 MiB only once.
    source = LIBC + ("sizes = []\nfor _ in range(3):\n    sizes.append(libc.shmget(0, 150 << 20, 0o600) >= 0)\n"
                     "print(sizes)")
    result = run_python(source, limits=QUICK)
    if "ipc_namespace" not in result.protections:
        pytest.skip("this machine lacks ipc_namespace")
    assert (result.status, result.stdout) == ("ok", "[True, False, False]\n"), (result.reason, result.stdout)


def key_users() -> list[str]:
    """uids that hold kernel keys (/proc/key-users), sandbox uids among them."""
    try:
        return [line.split(":")[0].strip() for line in Path("/proc/key-users").read_text().splitlines()]
    except OSError:
        return []


@needs("seccomp_keyrings")
def test_keyring_is_refused(target):
    before = key_users()
    source = LIBC + ("for ring in (-4, -3, -5):  # the user, session and user-session keyrings\n"
                     "    assert libc.syscall(248, b'user', sys.argv[2].encode(), b'secret', 6, ring) == -1\n"
                     "    assert ctypes.get_errno() == 1, ctypes.get_errno()\n"
                     "assert libc.syscall(250, 0, -4, 0) == -1  # keyctl(KEYCTL_GET_KEYRING_ID)\n"
                     "assert libc.syscall(249, b'user', sys.argv[2].encode(), None, -4) == -1  # request_key\n"
                     "print('refused')")
    result = run_python(source, limits=QUICK, argv=target.argv)
    assert (result.status, result.stdout) == ("ok", "refused\n"), (result.reason, result.stderr)
    assert [uid for uid in key_users() if uid not in before] == []
    if Path("/proc/keys").exists():
        assert target.token not in Path("/proc/keys").read_text()


@pytest.fixture
def host_datagram_socket(private_tempdir):
    """A datagram socket like /dev/log: in a directory anyone may enter, writable by anyone."""
    directory = Path(tempfile.mkdtemp(dir=private_tempdir))
    directory.chmod(0o777)
    path = directory / "log"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    path.chmod(0o777)
    listener.setblocking(False)
    yield path, listener
    listener.close()


@needs("seccomp_sockets")
def test_unix_datagram_cannot_reach_a_host_socket(host_datagram_socket, target):
    path, listener = host_datagram_socket
    source = f"""
import socket, sys
path = {str(path)!r}
for attempt in ("socket", "sendto", "connect"):
    try:
        if attempt == "socket":
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"via socket", path)
        else:
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            if attempt == "sendto":
                a.sendto(b"via socketpair", path)
            else:
                a.connect(path)
                a.send(b"via connect")
        print(attempt, "sent")
    except OSError as e:
        print(attempt, "refused:", e.errno)
socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # uncaught: the run ends as network_blocked
"""
    result = run_python(source, limits=QUICK, argv=target.argv)
    with pytest.raises(BlockingIOError):
        listener.recv(100)  # nothing arrived
    assert result.stdout.split("\n")[:3] == [f"{a} refused: {errno.EAFNOSUPPORT}" for a in ("socket", "sendto",
                                                                                              "connect")]
    assert result.status == "network_blocked", (result.reason, result.stderr)


@needs("seccomp_sockets")
def test_stream_socketpairs_still_work():
    source = ("import asyncio, multiprocessing, socket\n"
              "a, b = socket.socketpair()\na.send(b'pair')\nprint(b.recv(4).decode())\n"
              "x, y = multiprocessing.Pipe()\nx.send('pipe')\nprint(y.recv())\n"
              "async def main():\n    return 'asyncio'\nprint(asyncio.run(main()))\n"
              "print(len(socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)))")
    result = run_python(source, limits=QUICK)
    assert (result.status, result.stdout) == ("ok", "pair\npipe\nasyncio\n2\n"), result.stderr


@needs("seccomp_memfd")
def test_memfd_beyond_the_memory_limit_is_refused(target):
    source = ("import os\nfd = os.memfd_create('hoard')\nfor _ in range(384):\n"
              "    os.write(fd, b'x' * (1 << 20))  # 384 MiB outside RLIMIT_AS's count\nprint('held')")
    result = run_python(source, limits=QUICK, argv=target.argv)
    assert (result.status, result.stdout) == ("error", ""), result.reason
    assert result.reason == "PermissionError: [Errno 1] Operation not permitted"


@needs("seccomp_namespaces")
def test_new_namespaces_are_refused(target):
    source = LIBC + """
before = os.readlink("/proc/self/ns/user")
assert libc.unshare(0x10000000) == -1 and ctypes.get_errno() == 1  # CLONE_NEWUSER
assert libc.unshare(0x08000000 | 0x40000000) == -1  # IPC + net
assert libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0) == -1 and ctypes.get_errno() == 1  # clone(CLONE_NEWUSER)
assert libc.syscall(435, 0, 0) == -1 and ctypes.get_errno() == 38  # clone3: ENOSYS, so glibc uses clone
fd = os.open("/proc/self/ns/user", os.O_RDONLY)
assert libc.setns(fd, 0) == -1 and ctypes.get_errno() == 1
assert os.readlink("/proc/self/ns/user") == before
print("refused")
"""
    result = run_python(source, limits=QUICK, argv=target.argv)
    assert (result.status, result.stdout) == ("ok", "refused\n"), (result.reason, result.stderr)


def test_threads_fork_and_subprocess_work_without_clone3():
    source = """
import ctypes, os, subprocess, sys, threading
from concurrent.futures import ThreadPoolExecutor
print(sum(ThreadPoolExecutor(4).map(abs, range(-10, 0))))
t = threading.Thread(target=print, args=("thread",))
t.start()
t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout, end="")
print(subprocess.run(["/bin/echo", "spawned"], capture_output=True, text=True).stdout, end="")
compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
a = (ctypes.c_int * 3)(3, 1, 2)
ctypes.CDLL(None).qsort(a, 3, 4, compare(lambda x, y: x[0] - y[0]))  # a libffi closure: no memfd needed
print(list(a))
import numpy
print(numpy.arange(4).sum())
"""
    result = run_python(source, limits=Limits(wall_s=20.0))
    assert result.status == "ok", (result.reason, result.stderr)
    assert result.stdout == "55\nthread\nfork 7\n42\nspawned\n[1, 2, 3]\n6\n"


@needs("seccomp_inotify")
def test_inotify_on_a_host_directory_is_refused(target):
    # Watching the sentinel (readable, not listable by Landlock) would reveal names created in it.
    source = LIBC + ("for call in (lambda: libc.inotify_init1(0), lambda: libc.syscall(253),  # inotify_init\n"
                     "             lambda: libc.syscall(300, 0, 0)):  # fanotify_init\n"
                     "    assert call() == -1 and ctypes.get_errno() in (1, 38), ctypes.get_errno()\n"
                     "print('refused')")
    result = run_python(source, limits=QUICK, argv=target.argv)
    assert (result.status, result.stdout) == ("ok", "refused\n"), (result.reason, result.stderr)


FAKE_TRACEBACK = ("import sys\nsys.stderr.write('Traceback (most recent call last):\\n  File \"main.py\", line 1, "
                  "in <module>\\n{line}\\n')\nsys.exit(1)")
FORGED = {  # a failing program that prints the text of a limit: it is an "error", nothing more
    "memory_limit": "MemoryError",
    "process_limit": "BlockingIOError: [Errno 11] Resource temporarily unavailable",
    "file_size_limit": "OSError: [Errno 27] File too large",
    "network_blocked": "OSError: [Errno 101] Network is unreachable",
}
REAL = {  # the same statuses, really met
    "memory_limit": ("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", QUICK),
    "process_limit": ("import os\nwhile True:\n    os.fork()", QUICK),
    "file_size_limit": ("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the signal\n"
                        "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)",
                        Limits(wall_s=5.0, fsize_mb=1)),
    "network_blocked": ("import urllib.request\nurllib.request.urlopen('http://example.com', timeout=3)", QUICK),
}


@pytest.mark.parametrize("status", list(FORGED))
def test_printed_text_does_not_choose_the_status(status):
    forged = run_python(FAKE_TRACEBACK.format(line=FORGED[status]), limits=QUICK)
    assert (forged.status, forged.returncode, forged.reason) == ("error", 1, FORGED[status])
    source, limits = REAL[status]
    if status == "process_limit" and not AVAILABLE["nproc_limit"]:
        pytest.skip("this machine lacks nproc_limit")
    real = run_python(source, limits=limits)
    assert real.status == status, (real.reason, real.stderr[-2000:])
    assert real.returncode == {v: k for k, v in DIED_OF.items()}[status]


def test_forged_fatal_error_is_a_signal():
    source = "import os, sys\nsys.stderr.write('Fatal Python error: MemoryError\\n')\nsys.stderr.flush()\nos.abort()"
    result = run_python(source, limits=QUICK)
    assert (result.status, result.returncode) == ("signal", -signal.SIGABRT), result.reason


def test_caught_memory_error_printed_and_exit_1_is_error():
    source = ("import sys, traceback\ntry:\n    b = bytearray(1 << 40)\nexcept MemoryError:\n"
              "    traceback.print_exc()\n    sys.exit(1)")
    result = run_python(source, limits=QUICK)
    assert (result.status, result.reason) == ("error", "MemoryError"), result.stderr


def test_prelude_exit_codes_match_classify():
    # prelude.py (the program's interpreter) and classify.py (the harness) share DIED_OF's numbers.
    prelude = (Path(runner.SANDBOX_DIR) / "prelude.py").read_text()
    returned = {int(n) for n in re.findall(r"return (\d{3})\b", prelude)}
    assert returned == set(DIED_OF)


# -- ordinary programs --------------------------------------------------------------------------------

def test_hello_world():
    result = run_python("print('hello world')")
    assert (result.status, result.stdout, result.stderr, result.returncode) == ("ok", "hello world\n", "", 0)
    assert result.passed and result.reason


def test_stdin_echo_and_argv():
    result = run_python("import sys\nprint(sys.stdin.read().upper(), sys.argv[1:])", stdin="abc\ndef",
                        argv=["x", "y"])
    assert result.stdout == "ABC\nDEF ['x', 'y']\n"
    assert run_python("print(input())", stdin=b"bytes too\n").stdout == "bytes too\n"


def test_large_stdin_and_output_within_caps():
    data = "x" * (3 << 20)
    result = run_python("import sys\ns = sys.stdin.read()\nprint(len(s))\nprint('y' * 500_000)", stdin=data)
    assert result.status == "ok" and result.stdout.split("\n", 1)[0] == str(len(data))


def test_environment_is_scrubbed_and_hashing_reproducible():
    source = "import os, sys\nprint(sorted(os.environ), os.environ['HOME'] == os.getcwd(), hash('abc'))"
    first, second = run_python(source), run_python(source)
    assert first.stdout == second.stdout
    names, home_is_cwd, _ = first.stdout.rsplit(" ", 2)
    assert eval(names) == ["HOME", "LANG", "MALLOC_ARENA_MAX", "PATH", "PYTHONDONTWRITEBYTECODE",
                           "PYTHONHASHSEED"]
    assert home_is_cwd == "True"


def test_temp_dir_is_private_and_removed():
    source = "import os\nopen('made.txt', 'w').write('x')\nos.mkdir('d')\nos.chmod('d', 0)\nprint(os.getcwd())"
    result = run_python(source)
    assert result.status == "ok", result.stderr
    workdir = Path(result.stdout.strip())
    assert workdir.name.startswith("harness-sandbox-") and not workdir.exists()


def test_site_builtins_and_stdlib_work():
    source = ("import json, math, hashlib, collections, itertools, re, heapq, decimal, fractions\n"
              "print(math.comb(5, 2), hashlib.md5(b'a').hexdigest()[:6])\nexit(0)")
    result = run_python(source)
    assert (result.status, result.stdout) == ("ok", "10 0cc175\n"), result.stderr


def test_error_reason_is_last_traceback_line():
    result = run_python("def f():\n    raise ValueError('bad value')\nprint('partial')\nf()")
    assert (result.status, result.reason, result.returncode) == ("error", "ValueError: bad value", 1)
    assert result.stdout == "partial\n" and "Traceback" in result.stderr


def test_output_decoded_with_replacement():
    result = run_python("import sys\nsys.stdout.buffer.write(b'ok \\xff\\n')\nprint('\\u00e9')")
    assert result.stdout == "ok \ufffd\n\u00e9\n"


def test_timeout_keeps_output_written_before_it():
    result = run_python("import time\nprint('started', flush=True)\ntime.sleep(60)", limits=Limits(wall_s=1.0))
    assert (result.status, result.stdout) == ("timeout", "started\n")
    assert result.reason == "wall-clock limit of 1 s exceeded"


# -- time: the program's own CPU seconds -------------------------------------------------------------

SPIN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end:\n    pass\n"


def test_cpu_time_is_the_programs_own_from_its_first_line():
    quick = run_python("print('hi')")
    assert quick.status == "ok" and 0 <= quick.cpu_s < 0.1  # interpreter start-up is not counted
    spun = run_python(SPIN.format(seconds=0.3) + "print('done')", limits=cpu_time_limits(1.0))
    assert (spun.status, spun.stdout) == ("ok", "done\n") and 0.3 <= spun.cpu_s < 0.45
    over = run_python("while True:\n    pass\n", limits=cpu_time_limits(1.0))
    assert over.status == "cpu_limit" and over.returncode == -signal.SIGPROF and 0.95 <= over.cpu_s < 1.2
    assert over.reason.startswith("CPU-time limit of 1 s exceeded")


def test_a_busy_machine_does_not_change_the_verdict():
    # 0.6 s of CPU against a 1 s limit, while 4 spinning processes share the cores with it: its wall
    # time may pass 1 s, its CPU time does not.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        result = run_python(SPIN.format(seconds=0.6) + "print('done')", limits=cpu_time_limits(1.0))
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert (result.status, result.stdout) == ("ok", "done\n") and 0.6 <= result.cpu_s < 0.8, result


def test_cpu_time_of_children_counts_and_waiting_does_not():
    forks = ("import os\nfor _ in range(2):\n    if os.fork() == 0:\n" + "".join(
        "        " + line + "\n" for line in SPIN.format(seconds=0.6).splitlines()) + "        os._exit(0)\n"
        "os.wait()\nos.wait()\nprint('children done')\n")
    result = run_python(forks, limits=cpu_time_limits(1.0))  # each child stays under 1 s, together they do not
    assert result.status == "cpu_limit" and result.returncode == 0 and result.cpu_s >= 1.2, result
    nap = run_python("import time\ntime.sleep(1.5)\nprint('rested')", limits=cpu_time_limits(0.5))
    assert (nap.status, nap.stdout) == ("ok", "rested\n") and nap.cpu_s < 0.1
    asleep = run_python("import time\ntime.sleep(60)", limits=cpu_time_limits(0.2))  # the wall-clock backstop
    assert asleep.status == "timeout" and asleep.reason == "wall-clock limit of 6 s exceeded"
    assert cpu_time_limits(3.0).wall_s == 20.0 and cpu_time_limits(6).cpu_s == 6.0


def test_run_many_keeps_order_and_runs_concurrently():
    # Each job prints when it ran; sleeping jobs on 2 workers must overlap, whatever the machine's load.
    jobs = [{"source": f"import sys, time\nstart = time.time()\ntime.sleep({0.5 if i % 2 else 0.1})\n"
                       f"print({i}, sys.stdin.read(), start, time.time())", "stdin": f"in{i}"} for i in range(6)]
    results = run_many(jobs, workers=2)
    assert [r.stdout.split()[:2] for r in results] == [[str(i), f"in{i}"] for i in range(6)]
    spans = sorted(tuple(map(float, r.stdout.split()[2:])) for r in results)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two jobs overlapped"


def test_protections_reported():
    assert set(AVAILABLE) == set(LAYERS)
    result = run_python("pass")
    assert set(result.protections) == {layer for layer, on in AVAILABLE.items() if on}
    for layer in ("tmpdir", "scrubbed_env", "new_session", "rlimits", "no_new_privs"):
        assert AVAILABLE[layer], layer


def test_required_layers_present():
    # CI can pin what its image must give (HARNESS_SANDBOX_REQUIRE=landlock_fs,pid_namespace,...), so a
    # layer that silently stops working fails the build instead of skipping its tests.
    required = [x for x in os.environ.get("HARNESS_SANDBOX_REQUIRE", "").split(",") if x]
    if not required:
        pytest.skip("HARNESS_SANDBOX_REQUIRE not set")
    assert [layer for layer in required if not AVAILABLE.get(layer)] == []


@pytest.mark.parametrize("report, stderr, expected", [
    ({"exit": signal.SIGKILL, "cpu_s": 2.0}, "", "cpu_limit"),      # the hard RLIMIT_CPU
    ({"exit": signal.SIGPROF, "cpu_s": 2.05, "start_cpu_s": 0.05}, "", "cpu_limit"),  # the prelude's timer
    ({"exit": 0, "cpu_s": 2.5, "start_cpu_s": 0.05}, "", "cpu_limit"),  # exited, but over (children's CPU)
    ({"exit": 0, "cpu_s": 2.04, "start_cpu_s": 0.05}, "", "ok"),  # start-up is not the program's

    ({"exit": signal.SIGKILL, "cpu_s": 0.1}, "", "signal"),
    # statuses come from the wait status, never from the text: stderr can be forged
    ({"exit": signal.SIGABRT}, "Fatal Python error: MemoryError", "signal"),
    ({"exit": 1 << 8}, "Traceback (most recent call last):\n  File x\nOSError: [Errno 101] Network is unreachable",
     "error"),
    ({"exit": 1 << 8}, "Traceback (most recent call last):\n  File x\nMemoryError", "error"),
    ({"exit": 211 << 8}, "", "network_blocked"),  # the prelude's exit codes (classify.DIED_OF)
    ({"exit": 208 << 8}, "Traceback (most recent call last):\n  File x\nMemoryError", "memory_limit"),
    ({"exit": signal.SIGXFSZ}, "", "file_size_limit"),
    ({"exit": 1 << 8}, "Traceback (most recent call last):\n  File x\nPermissionError: [Errno 13] Permission "
     "denied: '/etc/shadow'\nsocket", "error"),
    ({"exit": 0, "error": "program setup failed: x"}, "", "sandbox_error"),
    ({"stopped": "terminated"}, "", "sandbox_error"),
])
def test_classify_edge_cases(report, stderr, expected):
    status, reason, _ = classify(report, stderr, wall_s=1.0, cpu_s=2.0, output_exceeded=None, backstop=False)
    assert status == expected, reason


def test_no_zombies_or_stray_sandboxes_left():
    zombies = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) == os.getpid():
            zombies.append(pid)
    assert zombies == []
    assert processes_with("sbxtok") == []
    sandbox_uids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = int(next(line for line in status.read_text().splitlines() if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if uid >= UID_BASE:
            sandbox_uids.append(status.parent.name)
    assert sandbox_uids == [], "processes of a sandbox uid are still running"
