"""One way to build an artifact that several processes may want at once (a cell, a DnD library LoRA or
generator, the converted model), on one machine or on many hosts sharing a network file system: under a lock file
beside its folder, in a `.partial` folder that only the lock's holder touches, published by one rename. A process
that wants an artifact another is building waits for the lock and then reuses what was published.

The lock is a file, `.NAME.lock`, created by `link(2)` of a fully written temporary file (atomic on local file
systems and on NFS, where flock may not reach across hosts). It names its holder (host, pid, the pid's start time,
a random token) and the holder touches it every few seconds (a heartbeat). A lock whose holder is gone is stale
and is taken over, with a message: at once when the holder was on this host and its pid is gone (or reused);
after HARNESS_LOCK_STALE_S seconds (default 300) without a heartbeat, timed on the waiter's own clock, when it
was on another host. What a killed builder leaves besides its lock is its `.partial` folder: the next holder finds
it, says whose it was, and takes it over (removed, or kept for a cell, whose saved adaptation the next run
reuses). A holder publishes only while the lock file still carries its token.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from harness.errors import HarnessError

PARTIAL = ".partial"
BUILDER = ".builder.json"  # who builds in a .partial folder: read when the next builder takes it over
T = TypeVar("T")


def say_stderr(message: str) -> None:
    print(f"[harness] {message}", file=sys.stderr, flush=True)


def partial_dir(final: Path) -> Path:
    return Path(final).with_name(Path(final).name + PARTIAL)


def lock_path(final: Path) -> Path:
    return Path(final).with_name(f".{Path(final).name}.lock")


def stale_after() -> float:
    """Seconds without a heartbeat after which another host's lock is stale (HARNESS_LOCK_STALE_S)."""
    raw = os.environ.get("HARNESS_LOCK_STALE_S", "300")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise HarnessError(f"HARNESS_LOCK_STALE_S={raw!r} is not a positive number of seconds: unset it (300) or "
                           "set it above the longest pause a builder's file system may have, e.g. 600")
    return value


def _pid_start(pid: int) -> str | None:
    """The start time of `pid` on this host, in clock ticks since boot (Linux /proc), or None where unknown:
    it tells a pid that was reused by another process from the one that took the lock."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie has finished: its lock is stale


def _pid_gone(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        pass
    if Path("/proc/self/stat").exists():
        now = _pid_start(pid)
        return now is None or (start is not None and now != start)
    return False


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    token: str
    started: str
    pid_start: str | None = None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"

    @classmethod
    def read(cls, path: Path) -> "Owner | None":
        try:
            info = json.loads(path.read_text())
            return cls(str(info["host"]), int(info["pid"]), str(info["token"]), str(info["started"]),
                       info.get("pid_start"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass
class ArtifactLock:
    """The lock file of one artifact (see the module's docstring). `acquire` waits, taking over a stale lock
    with a message; while held, a daemon thread touches the file every `heartbeat` seconds."""
    path: Path
    what: str
    say: Callable[[str], None] = lambda message: None
    stale_s: float = field(default_factory=stale_after)
    owner: Owner | None = None
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _beat: threading.Thread | None = None

    @property
    def heartbeat(self) -> float:
        return max(0.05, min(10.0, self.stale_s / 6))

    def try_acquire(self) -> bool:
        me = Owner(socket.gethostname(), os.getpid(), secrets.token_hex(8), time.strftime("%Y-%m-%dT%H:%M:%S"),
                   _pid_start(os.getpid()))
        tmp = self.path.with_name(f"{self.path.name}.{me.token}.tmp")
        tmp.write_text(json.dumps(me.__dict__))
        try:
            os.link(tmp, self.path)
            won = True
        except FileExistsError:
            won = False
        except OSError:  # NFS may lose the reply to a link that happened: the link count tells
            won = tmp.stat().st_nlink == 2
        finally:
            tmp.unlink(missing_ok=True)
        if won:
            self.owner, self.lost = me, False
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, name=f"lock {self.path.name}", daemon=True)
            self._beat.start()
        return won

    def acquire(self, on_wait: Callable[[Owner | None], None] = lambda owner: None) -> None:
        said, poll = False, 0.05
        seen: tuple[float, float] | None = None  # (the lock's mtime, when this waiter first saw that mtime)
        while not self.try_acquire():
            holder = Owner.read(self.path)
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile
            if seen is None or seen[0] != mtime:
                seen = (mtime, time.monotonic())
            reason = self._stale(holder, time.monotonic() - seen[1])
            if reason:
                self._take_over(holder, reason)
                continue
            if not said:
                on_wait(holder)
                said = True
            time.sleep(poll)
            poll = min(poll * 1.5, 2.0)

    def _stale(self, holder: Owner | None, quiet_s: float) -> str | None:
        if holder is not None and holder.host == socket.gethostname() and _pid_gone(holder.pid, holder.pid_start):
            return f"its holder, pid {holder.pid} on this host ({holder.host}), is gone"
        if quiet_s > self.stale_s:
            who = holder.describe() if holder else "an unreadable lock file"
            return f"no heartbeat for {quiet_s:.0f}s (HARNESS_LOCK_STALE_S={self.stale_s:g}) from {who}"
        return None

    def _take_over(self, holder: Owner | None, reason: str) -> None:
        """Move the stale lock aside; if what was moved is not the lock judged stale (another waiter took it over
        and a new holder locked meanwhile), put it back."""
        grave = self.path.with_name(f"{self.path.name}.{secrets.token_hex(8)}.stale")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        moved = Owner.read(grave)
        if holder is not None and (moved is None or moved.token != holder.token):
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        else:
            self.say(f"taking over the lock on {self.what}: {reason}")
        grave.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if not self.held():
                self.lost = True
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def held(self) -> bool:
        current = Owner.read(self.path)
        return self.owner is not None and current is not None and current.token == self.owner.token

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self.held():
            self.path.unlink(missing_ok=True)
        self.owner = None


@dataclass
class Build:
    """The lock holder's view of one artifact: `start()` gives the folder to build in, `publish()` puts it at
    `final`."""
    final: Path
    what: str
    say: Callable[[str], None]
    keep: bool
    lock: ArtifactLock | None = None
    took_over: bool = False  # `work` was left by a builder that stopped
    started: bool = False

    @property
    def work(self) -> Path:
        return partial_dir(self.final)

    def start(self) -> Path:
        work = self.work
        self.took_over = work.exists()
        if self.took_over:
            self.say(f"taking over {self.what}: {work} was left half-built by a builder that stopped "
                     f"({_builder(work)})" + ("; keeping what it saved" if self.keep else "; building it again"))
            if not self.keep:
                shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        (work / BUILDER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        self.started = True
        return work

    def publish(self) -> None:
        if self.lock is not None and not self.lock.held():
            holder = Owner.read(self.lock.path)
            raise HarnessError(f"lost the lock on {self.what} to {holder.describe() if holder else 'another process'}"
                               f" (this builder's heartbeat stopped for over {self.lock.stale_s:g}s): nothing was "
                               "published; run again, with a larger HARNESS_LOCK_STALE_S if the file system pauses")
        (self.work / BUILDER).unlink(missing_ok=True)
        if self.final.exists():  # a damaged or superseded copy; only the lock's holder replaces it
            shutil.rmtree(self.final)
        os.rename(self.work, self.final)


def _builder(work: Path) -> str:
    try:
        info = json.loads((work / BUILDER).read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an earlier run"


@contextmanager
def building(final: Path, what: str, say: Callable[[str], None] = say_stderr, keep: bool = False,
             root: Path | None = None) -> Iterator[Build]:
    """Hold `final`'s lock while the body checks whether `final` is there and, if not, builds it (`Build.start`,
    `Build.publish`). A stale lock (its holder gone) and a `.partial` folder left by a builder that stopped are
    taken over: the folder removed, or with `keep` handed over as it is. What this builder started and did not
    publish is removed unless `keep`. After release, folders above `final` left empty (up to `root`) are removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = ArtifactLock(lock_path(final), what, say)

    def waiting(holder: Owner | None) -> None:
        who = holder.describe() if holder else _builder(partial_dir(final))
        say(f"waiting: another process ({who}) is building {what}")

    lock.acquire(waiting)
    build = Build(final, what, say, keep, lock)
    try:
        yield build
    finally:
        try:
            if build.started and not build.keep and build.work.exists() and lock.held():
                shutil.rmtree(build.work, ignore_errors=True)  # a failed build leaves nothing half-written
        finally:
            lock.release()
        if root is not None:
            prune_empty(final.parent, Path(root))


def prune_empty(folder: Path, root: Path) -> None:
    """Remove `folder` and the folders above it while they are empty, up to (not including) `root`."""
    root = root.resolve()
    folder = folder.resolve()
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent


def get_or_build(final: Path, read: Callable[[Path], T | None], make: Callable[[Path], T | None], what: str,
                 say: Callable[[str], None] = say_stderr) -> tuple[T, bool]:
    """(the artifact at `final`, reused): `read(final)` if it gives one, else `make(work)` builds it under the lock
    and it is published; `make`'s result is returned, or `read(final)` after publishing when it returns None."""
    found = read(final)
    if found is not None:
        return found, True
    with building(final, what, say) as build:
        found = read(final)
        if found is not None:  # published by the process we waited for
            say(f"reusing {what}, built by another process meanwhile")
            return found, True
        made = make(build.start())
        build.publish()
    return (read(final) if made is None else made), False
