"""The results store: one folder per cell, keyed by a hash of the resolved config, written atomically."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from harness.artifacts import prune_empty
from harness.errors import HarnessError

RECORD = "record.json"
SAMPLES = "samples.jsonl"
ADAPTATION = "adaptation.json"
SCHEMA = 1

# Config keys that change where or how loudly a cell runs, not what it computes.
NON_IDENTITY_KEYS = ("runs_dir", "progress", "experiment", "report", "sweeps")


def identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}


def variant_key(config: dict) -> str:
    """Hash of everything but the seed: cells that differ only by seed share it."""
    canonical = json.dumps({k: v for k, v in identity(config).items() if k != "seed"}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def cell_key(config: dict) -> str:
    canonical = json.dumps(identity(config), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cell_dir(runs_dir: Path, config: dict, key: str) -> Path:
    name = f"{config['strategy']['name']}__{config['budget']['name']}__seed{config['seed']}__{key[:10]}"
    return Path(runs_dir) / config["model"]["name"] / config["task"]["name"] / name


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _write_atomic(path: Path, write) -> None:
    """Write through `write(fh)` to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide records from the others sharing a runs folder
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj, indent: int | None = 1) -> None:
    _write_atomic(path, lambda fh: json.dump(obj, fh, indent=indent, default=str, allow_nan=True))


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, lambda fh: fh.writelines(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in rows))


NUMBER = (int, float)
# What every reader of a record relies on (the rerun's skip, the report, `runs stale`): key → type, or the
# shape of a nested object. A record that lacks any of it is not finished: a rerun redoes its cell.
RECORD_SHAPE = {
    "schema": int, "key": str,
    "cell": {"model": str, "task": str, "strategy": str, "budget": str, "seed": int},
    "config": {"model": dict, "task": dict, "strategy": dict,
               "budget": {"name": str, "kind": str, "amount": NUMBER, "horizon": NUMBER}},
    "metrics": dict, "adaptation": dict, "costs": list,
    "adaptation_cost": {"flops_measured": NUMBER, "wall_s": NUMBER},
    "per_query": {"flops_measured": NUMBER, "wall_s": NUMBER},
    "at_horizon": {"horizon": NUMBER},
}


def shape_problem(obj, shape, where: str = "") -> str | None:
    """What keeps `obj` from having `shape` (RECORD_SHAPE's form), or None."""
    if isinstance(shape, dict):
        if not isinstance(obj, dict):
            return f"{where or 'the file'} is {type(obj).__name__}, not an object"
        for key, inner in shape.items():
            if key not in obj:
                return f"no {where + '.' if where else ''}{key}"
            problem = shape_problem(obj[key], inner, f"{where}.{key}" if where else key)
            if problem:
                return problem
        return None
    if isinstance(obj, bool) or not isinstance(obj, shape):
        names = "/".join(t.__name__ for t in shape) if isinstance(shape, tuple) else shape.__name__
        return f"{where} is {type(obj).__name__}, not {names}"
    return None


def load_record(folder: Path) -> tuple[dict | None, str | None]:
    """(the finished record in `folder`, None), or (None, what is wrong with it); (None, None) when there is none."""
    path = Path(folder) / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {getattr(exc, 'strerror', None) or str(exc).splitlines()[0][:120]}"
    problem = shape_problem(record, RECORD_SHAPE)
    if problem is None and record["schema"] != SCHEMA:
        problem = f"schema {record['schema']}; this harness reads schema {SCHEMA}"
    return (None, problem) if problem else (record, None)


def read_record(folder: Path, key: str | None = None) -> dict | None:
    """The finished record in `folder`, or None (missing, unreadable, of the wrong shape, or for another config)."""
    record, _ = load_record(folder)
    if record is None or (key is not None and record["key"] != key):
        return None
    return record


def iter_records(runs_dir: Path, skipped: list | None = None):
    """(folder, record) of every finished record under `runs_dir`; unreadable ones are left out, and listed as
    (file, problem) in `skipped` when it is given."""
    for path in sorted(Path(runs_dir).rglob(RECORD)):
        if any(part.endswith(".partial") for part in path.parts):
            continue  # not published yet: a cell still running, or one that died before its rename
        record, problem = load_record(path.parent)
        if record is not None:
            yield path.parent, record
        elif problem and skipped is not None:
            skipped.append((path, problem))


def read_samples(folder: Path) -> list[dict]:
    path = Path(folder) / SAMPLES
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def samples_problem(folder: Path) -> str | None:
    """What keeps the report from reading `folder`'s samples (a damaged samples.jsonl), or None."""
    try:
        rows = read_samples(folder)
    except (OSError, ValueError) as exc:
        return f"{SAMPLES} unreadable: {getattr(exc, 'strerror', None) or str(exc).splitlines()[0][:120]}"
    if not all(isinstance(row, dict) for row in rows):
        return f"{SAMPLES} holds a line that is not an object"
    return None


def superseded(runs_dir: Path, config: dict, key: str) -> list[Path]:
    """Finished records of this very cell (same config) under another key: made with other inputs."""
    folder = cell_dir(runs_dir, config, key)
    prefix = folder.name[: -len(key[:10])]
    mine = identity(config)
    out = []
    for other in sorted(folder.parent.glob(prefix + "*")):
        if other.name.endswith(".partial") or other == folder:
            continue
        record = read_record(other)
        if record is not None and record.get("key") != key and identity(record.get("config", {})) == mine:
            out.append(other)
    return out


RUNS_FIX = "set HARNESS_RUNS_DIR (or runs_dir=...) to a folder you can write"
# Errors that mean "this place cannot take the files", wherever they come from (OSError, or a library's
# own error that only quotes the OS: safetensors' "No space left on device (os error 28)").
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system"}


def write_problem(exc: BaseException, where: Path | None = None) -> str | None:
    """Why writing failed when the place, not the program, is at fault (a full disk, a read-only file
    system), else None. `where`: a path on the disk written to; a disk left with under 1 MiB counts as full
    (torch reports a short write only as "unexpected pos")."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _WRITE_ERRNOS:
            return _WRITE_ERRNOS[seen.errno]
        text = str(seen)
        for code, name in _WRITE_ERRNOS.items():
            if os.strerror(code) in text or f"os error {code})" in text:
                return name
        seen = seen.__cause__ or seen.__context__
    if where is not None:
        probe = Path(where)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            if shutil.disk_usage(probe).free < 1 << 20:
                return "no space left on device"
        except OSError:
            pass
    return None


def writable_problem(folder: Path) -> str | None:
    """Why files cannot be made in `folder` (or in the folders `mkdir -p` would make for it), or None. Probes
    with a temporary file, so that read-only mounts are caught for root too; leaves nothing behind."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".harness-probe-"):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def check_writable(folder: Path, what: str = "runs folder", fix: str = RUNS_FIX) -> None:
    """A one-line error unless files can be made in `folder`."""
    problem = writable_problem(folder)
    if problem:
        raise HarnessError(f"cannot write in the {what} {folder} ({problem}): {fix}")


def remove_partial(work: Path, runs_dir: Path) -> None:
    """Remove a cell's unpublished folder and the folders above it that it alone filled (up to `runs_dir`)."""
    shutil.rmtree(work, ignore_errors=True)
    prune_empty(Path(work).parent, Path(runs_dir))
