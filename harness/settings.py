"""Where things live: project folders and the environment variables that move them."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
TASKS_DIR = PROJECT_ROOT / "tasks"


def data_dir() -> Path | None:
    """Offline benchmark mirror (`<owner>/<name>/<config>/<split>.jsonl`), if configured."""
    value = os.environ.get("HARNESS_DATA_DIR")
    return Path(value).expanduser().resolve() if value else None


def cache_dir() -> Path:
    value = os.environ.get("HARNESS_CACHE_DIR") or "~/.cache/harness"
    path = Path(value).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(default: str | os.PathLike = "runs") -> Path:
    return Path(os.environ.get("HARNESS_RUNS_DIR") or default).expanduser()


def hub_offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0", "false", "False")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))
