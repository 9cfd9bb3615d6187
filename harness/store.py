"""The results store: one folder per cell, keyed by a hash of the resolved config, written atomically."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

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


def _write_atomic(path: Path, write) -> None:
    """Write through `write(fh)` to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
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


def read_record(folder: Path, key: str | None = None) -> dict | None:
    """The finished record in `folder`, or None (missing, unreadable, or for another config)."""
    path = Path(folder) / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if key is not None and record.get("key") != key:
        return None
    return record


def iter_records(runs_dir: Path):
    for path in sorted(Path(runs_dir).rglob(RECORD)):
        if any(part.endswith(".partial") for part in path.parts):
            continue  # not published yet: a cell still running, or one that died before its rename
        record = read_record(path.parent)
        if record is not None and record.get("schema") == SCHEMA:
            yield path.parent, record


def read_samples(folder: Path) -> list[dict]:
    path = Path(folder) / SAMPLES
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
