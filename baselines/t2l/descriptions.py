"""Task descriptions, the only input T2L sees of a task (configs/t2l_descriptions/<task>.yaml, written for this
project), the paper's two controls on them, and their embeddings.

Each file holds `train` descriptions (what the hypernetwork learns from while the task is in its library) and
`eval` descriptions (what generates the task's adapter when it is held out), disjoint. The controls, as the paper
runs them: `unaligned` takes evaluation descriptions of *other* tasks, `random` seeded strings of random letters.
They live apart from the task configs so that editing a description re-keys T2L's cells only (the strategy's
fingerprint hashes this folder), not every cell of the task.
"""
from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from harness.errors import HarnessError
from harness.settings import CONFIG_DIR

FOLDER = CONFIG_DIR / "t2l_descriptions"
BASE_LAST_TOKEN = "base_last_token"  # the paper's ablation: the base model's last-token hidden state


@dataclass(frozen=True)
class Descriptions:
    task: str
    train: tuple[str, ...]
    eval: tuple[str, ...]


def load(task: str) -> Descriptions:
    path = FOLDER / f"{task}.yaml"
    if not path.is_file():
        raise HarnessError(f"T2L: task {task} has no descriptions ({path} is missing): write one with `train` and "
                           f"`eval` lists, or pass strategy.description='...' for a target")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    if data.get("same_as"):
        same = load(str(data["same_as"]))
        return Descriptions(task, same.train, same.eval)
    train = tuple(str(d).strip() for d in data.get("train") or [])
    evals = tuple(str(d).strip() for d in data.get("eval") or [])
    for name, values in (("train", train), ("eval", evals)):
        if not values or not all(values):
            raise HarnessError(f"T2L: {path} has no {name} descriptions (or an empty one): write at least one")
    shared = sorted(set(train) & set(evals))
    if shared:
        raise HarnessError(f"T2L: {path} lists {shared[0]!r} under both train and eval: a held-out task must be "
                           "described by sentences the hypernetwork never trained on")
    return Descriptions(task, train, evals)


def digest() -> str:
    """sha256 over every description file: T2L's cells are keyed by it (an edited description makes new cells)."""
    h = hashlib.sha256()
    for path in sorted(FOLDER.glob("*.yaml")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def random_strings(n: int, seed: int, length: int = 24) -> list[str]:
    """The paper's random-description control: strings of random lowercase letters (seeded)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(length)) for _ in range(n)]


def for_target(target: str, kind: str, seed: int, others: list[str], custom: str | None = None) -> tuple[str, str]:
    """(description, where it came from) that generates the target's adapter. `aligned`: the target's evaluation
    description number `seed` (cycling); `unaligned`: an evaluation description of another task (`others`, picked
    by the seed); `random`: a random string; `custom`: the user's own."""
    if custom is not None:
        return str(custom).strip(), "custom"
    if kind == "aligned":
        evals = load(target).eval
        return evals[seed % len(evals)], f"aligned: {target} eval #{seed % len(evals)}"
    if kind == "unaligned":
        if not others:
            raise HarnessError("T2L: unaligned descriptions need another task with descriptions")
        rng = random.Random(f"unaligned:{target}:{seed}")
        other = rng.choice(sorted(others))
        evals = load(other).eval
        k = rng.randrange(len(evals))
        return evals[k], f"unaligned: {other} eval #{k}"
    return random_strings(1, seed)[0], f"random (seed {seed})"


def add_full_stop(text: str) -> str:
    """As the official code does before encoding a description."""
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


class DescriptionEncoder:
    """Sentence embeddings of descriptions: a sentence-transformers model (its own pooling: CLS for the paper's
    gte-large-en-v1.5, mean for MiniLM) or, as the paper's ablation, the base model's last-token hidden state.
    FLOPs are counted by the caller's meter."""

    def __init__(self, name: str, device: torch.device, model=None, tokenizer=None) -> None:
        self.name, self.device = name, device
        if name == BASE_LAST_TOKEN:
            if model is None:
                raise HarnessError("T2L: encoder=base_last_token needs the base model")
            self.model, self.tokenizer = model, tokenizer
            self.dim = model.config.hidden_size
            self.params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
            self.st = None
        else:
            from baselines.dnd.encoder import load_encoder

            self.st = load_encoder(name, "cpu" if device.type != "cuda" else str(device))
            self.dim = self.st.dim

    @torch.no_grad()
    def embed(self, texts: list[str]) -> tuple[torch.Tensor, int]:
        """(len(texts), dim) float32 embeddings and the FLOPs spent (analytic)."""
        texts = [add_full_stop(t) for t in texts]
        if self.st is not None:
            vectors, lengths = self.st.embed(texts)
            return vectors, sum(self.st.flops(1, n) for n in lengths)
        out, flops = [], 0
        for text in texts:
            ids = self.tokenizer(text, return_tensors="pt")["input_ids"].to(self.model.device)
            hidden = self.model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
            out.append(hidden[0, -1].float().cpu())
            flops += 2 * self.params * ids.shape[1]
        return torch.stack(out), flops
