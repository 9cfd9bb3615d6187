"""A seccomp filter that takes away the system calls no test program needs and some attacks do.

Each group below is a layer of its own (boot installs one filter holding the groups not switched off):

  seccomp_sockets     socket(2) and io_uring (EAFNOSUPPORT / ENOSYS): no new socket of any family. A
                      network namespace already cuts TCP/UDP, but a pathname unix socket (the Docker
                      daemon's, D-Bus's, /dev/log) is reached through the filesystem, which Landlock
                      does not mediate for connect(2) or sendto(2). socketpair(2) only for AF_UNIX
                      SOCK_STREAM: asyncio and multiprocessing.Pipe work, while a datagram end, which
                      can sendto() any host datagram socket, is refused (EAFNOSUPPORT).
  seccomp_ipc         System V IPC and POSIX message queues (EPERM): their objects outlive the process
                      and are shared by uid. Only installed when boot made no IPC namespace.
  seccomp_memfd       memfd_create, memfd_secret (EPERM): memory that RLIMIT_AS does not count.
  seccomp_keyrings    add_key, request_key, keyctl (EPERM): keys outlive the run in the uid's keyring.
  seccomp_namespaces  unshare, setns, clone with any CLONE_NEW* flag (EPERM), clone3 (ENOSYS, whose
                      flags sit in memory a filter cannot read; glibc then falls back to clone): new
                      user namespaces are kernel attack surface, and none is needed.
  seccomp_inotify     inotify and fanotify altogether (EPERM): a watch on a host directory reveals the
                      names of files the program may not list; a watch cannot be limited by path here.

The filter is classic BPF over `struct seccomp_data` {int nr; u32 arch; u64 ip; u64 args[6]}; an
argument's low 32 bits are at 16 + 8 * i (little-endian). A foreign syscall ABI kills the process.
Only socketpair and clone depend on arguments, so the kernel's action cache allows every other system
call without running the filter. Child side: stdlib only.
"""
import ctypes
import os
import struct

from kernel import PR_SET_SECCOMP, prctl

# audit arch, then system call numbers by name (x86_64: arch/x86/entry/syscalls; aarch64: asm-generic).
_ARCHES = {
    "x86_64": (0xC000003E, {
        "socket": 41, "socketpair": 53, "clone": 56, "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67,
        "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70,
        "msgctl": 71, "mq_open": 240, "mq_unlink": 241, "memfd_create": 319, "add_key": 248, "request_key": 249,
        "keyctl": 250, "unshare": 272, "setns": 308, "inotify_init": 253, "inotify_init1": 294,
        "fanotify_init": 300}),
    "aarch64": (0xC00000B7, {
        "socket": 198, "socketpair": 199, "clone": 220, "shmget": 194, "shmat": 196, "shmctl": 195,
        "shmdt": 197, "semget": 190, "semop": 193, "semctl": 191, "semtimedop": 192, "msgget": 186,
        "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "mq_open": 180, "mq_unlink": 181, "memfd_create": 279,
        "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97, "setns": 268, "inotify_init1": 26,
        "fanotify_init": 262}),
}
_COMMON = {"io_uring_setup": 425, "clone3": 435, "memfd_secret": 447}  # one numbering on every architecture
# The system calls each layer refuses with EPERM (socketpair and clone are checked on their arguments).
REFUSED = {
    "seccomp_ipc": ("shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop", "msgget",
                    "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink"),
    "seccomp_memfd": ("memfd_create", "memfd_secret"),
    "seccomp_keyrings": ("add_key", "request_key", "keyctl"),
    "seccomp_namespaces": ("unshare", "setns"),
    "seccomp_inotify": ("inotify_init", "inotify_init1", "fanotify_init"),
}
LAYERS = ("seccomp_sockets", *REFUSED)

_AF_UNIX, _SOCK_STREAM, _SOCK_TYPE_MASK = 1, 1, 0xF
_CLONE_NEW_ANY = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_X32_BIT = 0x40000000  # x86_64's x32 ABI numbers: not ours, refuse them
_SECCOMP_MODE_FILTER = 2
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_EPERM, _EAFNOSUPPORT, _ENOSYS = 1, 97, 38
_LD_W_ABS, _ALU_AND_K, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x54, 0x15, 0x35, 0x45, 0x06


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def supported() -> bool:
    return os.uname().machine in _ARCHES


def _arg(i: int) -> int:
    return 16 + 8 * i  # low half of seccomp_data.args[i]


def _program(arch: int, numbers: dict, layers: set) -> bytes:
    """Assemble the filter: a list of (code, k, jump-if-true label, jump-if-false label) with labels resolved."""
    refused = [numbers[name] for layer in REFUSED if layer in layers for name in REFUSED[layer] if name in numbers]
    sockets, namespaces = "seccomp_sockets" in layers, "seccomp_namespaces" in layers
    code = [(_LD_W_ABS, 4), (_JEQ_K, arch, None, "kill"), (_LD_W_ABS, 0), (_JGE_K, _X32_BIT, "enosys", None)]
    if sockets:
        code += [(_JEQ_K, numbers["socket"], "eafnosupport", None), (_JEQ_K, numbers["io_uring_setup"], "enosys", None),
                 (_JEQ_K, numbers["socketpair"], "socketpair", None)]
    if namespaces:
        code += [(_JEQ_K, numbers["clone3"], "enosys", None), (_JEQ_K, numbers["clone"], "clone", None)]
    code += [(_JEQ_K, nr, "eperm", None) for nr in refused]
    code += [(_RET_K, _RET_ALLOW)]
    if sockets:  # socketpair(AF_UNIX, SOCK_STREAM | flags, ...) only
        code += [("socketpair",), (_LD_W_ABS, _arg(0)), (_JEQ_K, _AF_UNIX, None, "eafnosupport"),
                 (_LD_W_ABS, _arg(1)), (_ALU_AND_K, _SOCK_TYPE_MASK),
                 (_JEQ_K, _SOCK_STREAM, "allow", "eafnosupport")]
    if namespaces:
        code += [("clone",), (_LD_W_ABS, _arg(0)), (_JSET_K, _CLONE_NEW_ANY, "eperm", "allow")]
    code += [("allow",), (_RET_K, _RET_ALLOW), ("eperm",), (_RET_K, _RET_ERRNO | _EPERM),
             ("eafnosupport",), (_RET_K, _RET_ERRNO | _EAFNOSUPPORT), ("enosys",), (_RET_K, _RET_ERRNO | _ENOSYS),
             ("kill",), (_RET_K, _RET_KILL_PROCESS)]
    labels, pc = {}, 0
    for item in code:
        if len(item) == 1:
            labels[item[0]] = pc
        else:
            pc += 1
    out, pc = [], 0
    for item in code:
        if len(item) == 1:
            continue
        op, k, *jumps = item
        jt, jf = (labels[j] - pc - 1 if j else 0 for j in (jumps or [None, None]))
        assert 0 <= jt < 256 and 0 <= jf < 256, "jump out of classic BPF's reach"
        out.append(struct.pack("=HBBI", op, jt, jf, k))
        pc += 1
    return b"".join(out)


def install(layers: set) -> list[str]:
    """Install one filter with `layers` (names from LAYERS) on this thread and its future children.

    Needs no_new_privs. Returns the layers it put in force.
    """
    arch, numbers = _ARCHES[os.uname().machine]
    layers = [layer for layer in LAYERS if layer in layers]
    if not layers:
        return []
    code = _program(arch, {**numbers, **_COMMON}, set(layers))
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.addressof(buffer))
    prctl(PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.pointer(fprog))
    return layers
