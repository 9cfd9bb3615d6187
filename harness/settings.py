"""Where things live: project folders and the environment variables that move them."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ASSETS = "harness_assets"  # what configs/ and tasks/ are called in a wheel (see pyproject.toml)
SOURCE_DIR = Path(__file__).resolve().parents[1]  # holds the harness and baselines packages: checkout or site-packages


def _project_root() -> tuple[Path, bool]:
    """The folder holding configs/ and tasks/, and whether it is a checkout.

    A checkout (source tree, editable install) keeps them at its top, beside pyproject.toml; a regular
    install ships them as the package `harness_assets`, looked for beside this copy of harness first so
    that code and configs come from the same install.
    """
    if (SOURCE_DIR / "pyproject.toml").is_file() and (SOURCE_DIR / "configs" / "config.yaml").is_file():
        return SOURCE_DIR, True
    spec = importlib.util.find_spec(ASSETS)
    found = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for path in sorted(found, key=lambda p: p.resolve() != SOURCE_DIR / ASSETS):
        if (path / "configs" / "config.yaml").is_file():
            return path.resolve(), False
    return SOURCE_DIR / ASSETS, False  # a broken install: errors will name the folders it lacks


PROJECT_ROOT, FROM_CHECKOUT = _project_root()
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
