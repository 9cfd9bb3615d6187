"""One way to build an artifact that several processes may want at once (a cell, a DnD library LoRA or
generator, the converted model): under a file lock keyed by its folder, in a `.partial` folder beside it that only
the lock's holder touches, published by one rename. A process that wants an artifact another is building waits for
the lock and then reuses what was published.

The lock is `filelock.FileLock` (flock): the kernel drops it when its holder dies, so a lock is never stale itself.
What a killed builder leaves is its `.partial` folder: the next holder finds it, says whose it was, and takes it
over (removed, or kept for a cell, whose saved adaptation the next run reuses). The lock file is unlinked before
release so that nothing is left beside a published artifact; filelock retries a lock taken on an unlinked file.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from filelock import FileLock, Timeout

PARTIAL = ".partial"
BUILDER = ".builder.json"  # who builds in a .partial folder: read when the next builder takes it over
T = TypeVar("T")


def say_stderr(message: str) -> None:
    print(f"[harness] {message}", file=sys.stderr, flush=True)


def partial_dir(final: Path) -> Path:
    return Path(final).with_name(Path(final).name + PARTIAL)


def lock_path(final: Path) -> Path:
    return Path(final).with_name(f".{Path(final).name}.lock")


@dataclass
class Build:
    """The lock holder's view of one artifact: `start()` gives the folder to build in, `publish()` puts it at
    `final`."""
    final: Path
    what: str
    say: Callable[[str], None]
    keep: bool
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
    `Build.publish`). A `.partial` folder left by a builder that stopped is taken over: removed, or with `keep`
    handed over as it is. What this builder started and did not publish is removed unless `keep`. After release,
    folders above `final` left empty (up to `root`) are removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(final)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"waiting: another process ({_builder(partial_dir(final))}) is building {what}")
        lock.acquire()
    build = Build(final, what, say, keep)
    try:
        yield build
    finally:
        try:
            if build.started and not build.keep and build.work.exists():
                shutil.rmtree(build.work, ignore_errors=True)  # a failed build leaves nothing half-written
        finally:
            lock_path(final).unlink(missing_ok=True)  # while held: a waiter that opened it retries on a fresh file
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
