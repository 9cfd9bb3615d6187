import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests never reach the Hub: an offline failure must be fast and explicit.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "HARNESS_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["HARNESS_DATA_DIR"] = str(SHARED_DATA)

needs_data = pytest.mark.skipif(
    not (Path(os.environ.get("HARNESS_DATA_DIR", "/nonexistent")) / "allenai").is_dir(),
    reason="offline benchmark data not found (set HARNESS_DATA_DIR to ../shared/data)")


def compose(*overrides: str):
    from harness.cli import compose_config

    return compose_config(list(overrides))


def write_library(root, trajectories: dict):
    """DnD library entries on disk from {task: [state dict per saved step]} (built rather than trained), as
    `LibraryEntry`s whose final adapter is the last step."""
    from safetensors.torch import save_file

    from baselines.dnd.library import LibraryEntry
    from harness.costs import PhaseCost

    entries = []
    for task, states in trajectories.items():
        paths = []
        for c, state in enumerate(states):
            path = Path(root) / task / f"step_{c}"
            path.mkdir(parents=True)
            save_file(state, str(path / "adapter_model.safetensors"))
            paths.append(path)
        entries.append(LibraryEntry(task, f"key-{task}", Path(root) / task, paths, paths[-1],
                                    PhaseCost(phase="collect", device="cpu")))
    return entries


@pytest.fixture(scope="session")
def tiny():
    """The tiny random model (fresh weights each call would be slow: share one, never mutate it)."""
    import torch

    from harness.models import load_model

    cfg = compose("model=tiny-random").model
    return load_model(cfg, torch.device("cpu"), torch.float32)


@pytest.fixture
def fresh_tiny():
    import torch

    from harness.models import load_model

    return load_model(compose("model=tiny-random").model, torch.device("cpu"), torch.float32)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
