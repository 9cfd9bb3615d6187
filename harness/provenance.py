"""What a result depends on beyond its config: the code that ran, package versions, the model's weights, the data.

These enter the key of every cell and of every shared artifact (DnD's library LoRAs and generators),
so that a finished result is reused only while all of them are unchanged, and `harness runs stale`
can say which of them changed since a record was written.
"""
from __future__ import annotations

import functools
import hashlib
import re
import subprocess
from importlib import metadata
from pathlib import Path

from harness.errors import HarnessError
from harness.settings import FROM_CHECKOUT, PROJECT_ROOT as ROOT, SOURCE_DIR, hub_offline

CODE_DIRS = ("harness", "baselines", "tasks")  # everything a cell can execute that is ours
CODE_SUFFIXES = (".py", ".yaml", "_yaml", ".jinja")
KEY_PACKAGES = ("torch", "transformers", "peft", "lm_eval")  # their versions can move a score


def code_folders() -> dict[str, Path]:
    """Where CODE_DIRS are: at the top of a checkout; in an install, harness and baselines beside harness_assets."""
    packages = Path(ROOT) if FROM_CHECKOUT else SOURCE_DIR
    return {"harness": packages / "harness", "baselines": packages / "baselines", "tasks": Path(ROOT, "tasks")}


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> dict:
    """sha256 over the path and bytes of every source file under CODE_DIRS, and the git commit (when any).

    Paths are named as in the checkout (`tasks/math/utils.py`), so an installed copy of a commit
    hashes like its checkout.
    """
    digest = hashlib.sha256()
    n = 0
    for top, folder in code_folders().items():
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name.endswith(CODE_SUFFIXES) and "__pycache__" not in path.parts:
                name = f"{top}/{path.relative_to(folder).as_posix()}"
                digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
                n += 1
    return {"sha256": digest.hexdigest()[:20], "files": n, **_git()}


def _git() -> dict:
    if not FROM_CHECKOUT:  # an installed copy: a repository around site-packages is not this code's
        return {"git": None}
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return {"git": None}
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", *CODE_DIRS],
                                capture_output=True, text=True, timeout=10)
        return {"git": head.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git": None}


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    st = Path(path).stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime)


def model_identity(model_cfg) -> dict:
    """The weights a model config names: the GGUF file's sha256, or the Hub commit the revision resolves to.

    A random model is its config (arch, init_seed) plus the tokenizer's source, already in the cell's config.
    """
    source = model_cfg.get("source")
    if source == "gguf_package":
        from harness.models import _package_dir

        path = _package_dir(str(model_cfg["package"])) / str(model_cfg["gguf_file"])
        if not path.is_file():
            raise HarnessError(f"{model_cfg['gguf_file']} not found in package {model_cfg['package']}: "
                               "reinstall it (make setup)")
        return {"gguf_sha256": file_sha256(path)}
    if source == "hub":
        revision = model_cfg.get("revision") or "main"
        return {"hub_id": str(model_cfg["hub_id"]), "revision": revision,
                "commit": hub_commit(str(model_cfg["hub_id"]), str(revision))}
    if source == "random":
        from omegaconf import OmegaConf

        from harness.settings import CONFIG_DIR

        tok = model_cfg.get("tokenizer_from")
        path = CONFIG_DIR / "model" / f"{tok}.yaml"
        return {"tokenizer": model_identity(OmegaConf.load(path)) if tok and path.is_file() else None}
    return {}


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_commit(repo: str, revision: str) -> str | None:
    """The commit `revision` names: itself when it is one, else the Hub's answer, else the local cache's ref."""
    if _COMMIT.match(revision):
        return revision
    if not hub_offline():
        try:
            from huggingface_hub import HfApi

            return HfApi().model_info(repo, revision=revision, timeout=10).sha
        except Exception:  # noqa: BLE001  (no network, no such repo: fall back to the cache)
            pass
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / revision
        return ref.read_text().strip() or None
    except OSError:
        return None


def environment(model_cfg) -> dict:
    """The inputs every cell shares: code, package versions, model weights."""
    return {"code": code_fingerprint()["sha256"], "versions": package_versions(), "model": model_identity(model_cfg)}


# Inputs that describe the world a cell ran in (not how a sweep ordered it): what `harness runs stale` compares.
STALE_INPUTS = ("code", "versions", "model", "data", "tasks", "strategy")


def changes(recorded: dict | None, current: dict) -> list[str]:
    """Which inputs differ between a record's and the current ones ("code", "versions: torch", ...)."""
    recorded = recorded or {}
    out, missing = [], []
    for name in STALE_INPUTS:
        if name not in current and name not in recorded:
            continue
        if name not in recorded:
            missing.append(name)
        elif recorded.get(name) != current.get(name):
            old, new = recorded.get(name), current.get(name)
            if isinstance(old, dict) and isinstance(new, dict):
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                out.append(f"{name}: {', '.join(map(str, keys))}")
            else:
                out.append(name)
    if missing:
        out.append(f"not recorded: {', '.join(missing)} (a record from before they were keyed)")
    return out


@functools.lru_cache(maxsize=64)
def task_data(name: str) -> dict[str, str]:
    """Fingerprints of the data files a task config (configs/task/NAME.yaml) reads."""
    from omegaconf import OmegaConf

    from harness.settings import CONFIG_DIR
    from harness.tasks import TaskHandle

    path = CONFIG_DIR / "task" / f"{name}.yaml"
    if not path.is_file():
        raise HarnessError(f"task {name!r} has no config in configs/task/")
    return dict(TaskHandle.from_cfg(OmegaConf.load(path)).pool_info.fingerprints)


def current_inputs(config: dict, _tasks: dict | None = None) -> dict:
    """The STALE_INPUTS a cell with this (resolved) config would be keyed by now."""
    import json

    from omegaconf import OmegaConf

    from harness.strategy import get_strategy
    from harness.tasks import TaskHandle

    cfg = OmegaConf.create(config)
    memo = _tasks if _tasks is not None else {}
    task_key = json.dumps(config["task"], sort_keys=True, default=str)
    if task_key not in memo:
        memo[task_key] = dict(TaskHandle.from_cfg(cfg.task).pool_info.fingerprints)
    current = {**environment(cfg.model), "data": memo[task_key]}
    return {**current, **strategy_inputs(get_strategy(cfg.strategy.impl), cfg)}


def strategy_inputs(strategy, cfg) -> dict:
    """What a strategy reads beyond the config and the target's data: a digest of its own inputs (an adapter's
    files) and the data of other tasks it learns from (DnD's library). A hook left at its default adds nothing."""
    out = {}
    digest = strategy.fingerprint(cfg.strategy)
    if digest is not None:
        out["strategy"] = digest
    tasks = strategy.reads_tasks(cfg)
    if tasks:
        out["tasks"] = {name: task_data(name) for name in tasks}
    return out


def stale_records(runs_dir: Path) -> list[tuple[Path, list[str]]]:
    """Every finished record under runs_dir whose inputs differ from what its config would read now."""
    from harness import store

    memo: dict = {}
    out = []
    for folder, record in store.iter_records(Path(runs_dir)):
        try:
            now = current_inputs(record["config"], memo)
        except HarnessError as exc:
            out.append((folder, [f"cannot be re-keyed here: {exc}"]))
            continue
        reasons = changes(record.get("inputs"), now)
        if reasons:
            out.append((folder, reasons))
    return out
