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


RECONSTRUCTS = 0.9  # mean seen-task cosine at or above which a generator reconstructs its library
DISTINCT = 0.1  # generated outputs spread across tasks below this share of the library's spread: not told apart


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


def _spread(vectors: list[torch.Tensor]) -> float:
    centre = torch.stack(vectors).mean(0)
    return sum(float((v - centre).norm()) for v in vectors) / len(vectors)


def reconstruction(generate, entries: list[LibraryEntry], seen: dict[str, list[str]],
                   held: dict[str, list[str]]) -> dict:
    """Does a generator reproduce the tasks it was trained on? `generate(prompts)` is its LoRA state for a batch of
    prompts; `seen[task]` are prompts it trained on, `held[task]` pool prompts of the same task it never saw.

    Per task: cosine and relative L2 error of the generated LoRA against that task's checkpoint mean (and its
    cosine to the whole library's mean); across tasks: how far apart the generated LoRAs lie relative to how far
    apart the tasks' means do (`distinct`, 1 when the generator separates tasks as the library does, 0 when it
    emits one LoRA for all). Label: `collapsed` (outputs ≈ the library mean for every task: `distinct` below
    DISTINCT and cosine to the library mean at least RECONSTRUCTS), else `ok` (mean seen-task cosine at least
    RECONSTRUCTS), else `underfit`.
    """
    means = {e.task: flat(mean_state([e.state(p) for p in e.checkpoints])) for e in entries}
    library_mean = torch.stack(list(means.values())).mean(0)
    tasks, outputs = {}, {}
    for e in entries:
        row = {}
        for kind, prompts in (("seen", seen.get(e.task)), ("held_back", held.get(e.task))):
            if not prompts:
                continue
            out = flat(generate(prompts))
            target = means[e.task]
            row[kind] = {"cosine": _cos(out, target), "rel_l2": float((out - target).norm() / target.norm()),
                         "cosine_to_library_mean": _cos(out, library_mean)}
            if kind == "seen":
                outputs[e.task] = out
        tasks[e.task] = row
    seen_cos = sum(r["seen"]["cosine"] for r in tasks.values()) / len(tasks)
    to_mean = sum(r["seen"]["cosine_to_library_mean"] for r in tasks.values()) / len(tasks)
    library_spread = _spread(list(means.values()))
    distinct = _spread(list(outputs.values())) / library_spread if library_spread > 0 else float("nan")
    if distinct < DISTINCT and to_mean >= RECONSTRUCTS:
        label = "collapsed"
    elif seen_cos >= RECONSTRUCTS:
        label = "ok"
    else:
        label = "underfit"
    held_cos = [r["held_back"]["cosine"] for r in tasks.values() if "held_back" in r]
    return {"label": label, "seen_cosine": seen_cos, "held_back_cosine": sum(held_cos) / len(held_cos) if held_cos
            else None, "cosine_to_library_mean": to_mean, "distinct": distinct, "tasks": tasks,
            "thresholds": {"reconstructs": RECONSTRUCTS, "distinct": DISTINCT}}
