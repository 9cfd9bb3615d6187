"""The few Linux calls the standard library lacks (unshare before 3.12, mount, prctl, syscall), via ctypes.

Child side: imported by boot.py in a fresh `python -I -S` interpreter, so it uses the stdlib only.
Every function raises OSError with the kernel's errno, so callers can treat a missing layer as data.
"""
import ctypes
import os

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x00020000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 36, 38
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000

_libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter already loaded
_libc.syscall.restype = ctypes.c_long


def _check(result: int) -> int:
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def _as_long(arg):
    # Variadic C calls: a bare Python int would travel as a 32-bit int; the kernel reads a long.
    return ctypes.c_long(arg or 0) if arg is None or isinstance(arg, int) else arg


def syscall(number: int, *args) -> int:
    return _check(_libc.syscall(ctypes.c_long(number), *map(_as_long, args)))


def prctl(option: int, *args) -> int:
    return _check(_libc.prctl(ctypes.c_int(option), *map(_as_long, args)))


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def _path(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_path(source), _path(target), _path(fstype), ctypes.c_ulong(flags), _path(data)))
