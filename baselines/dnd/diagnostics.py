"""What DnD's records carry to show whether the generator learned: where a generated LoRA lies
relative to the library it was trained on (a collapsed generator emits the library mean)."""
from __future__ import annotations

import torch

from baselines.dnd.library import LibraryEntry


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].flatten().float() for k in sorted(state)])


def mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}


def collapse(generated: dict, entries: list[LibraryEntry]) -> dict:
    """How far the generated LoRA lies from the library mean, relative to how far the library LoRAs do."""
    mean = flat(mean_state([e.state(p) for e in entries for p in e.checkpoints]))
    finals = {e.task: flat(e.state()) for e in entries}
    gen = flat(generated)
    norm = float(mean.norm()) or 1.0
    dists = {t: float((gen - f).norm() / f.norm()) for t, f in finals.items()}
    return {"rel_dist_to_library_mean": float((gen - mean).norm()) / norm,
            "library_spread": sum(float((f - mean).norm()) / norm for f in finals.values()) / len(finals),
            "rel_dist_to_nearest_library_lora": min(dists.values()),
            "nearest_library_lora": min(dists, key=dists.get),
            "cosine_to_library_mean": float(torch.nn.functional.cosine_similarity(gen, mean, dim=0)),
            "l2_norm": float(gen.norm()), "library_mean_l2_norm": norm,
            "library_l2_norms": {t: float(f.norm()) for t, f in finals.items()}}
