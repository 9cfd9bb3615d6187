"""What DnD's records carry to show whether the generator learned: where a generated LoRA lies
relative to the library it was trained on (a collapsed generator emits the library mean)."""
from __future__ import annotations

import math

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


def _factors(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per adapted module, its (A [r, in], B [out, r]) in float64."""
    out: dict[str, list] = {}
    for key, value in state.items():
        for part, slot in ((".lora_A.", 0), (".lora_B.", 1)):
            if part in key:
                out.setdefault(key.replace(part, "."), [None, None])[slot] = value.double()
    return {k: (a, b) for k, (a, b) in out.items()}


def delta_inner(x: dict, y: dict) -> float:
    """<dW_x, dW_y> summed over modules, dW = B A (the weight update a LoRA applies, up to its constant alpha/r),
    without forming dW: <B1 A1, B2 A2> = tr((B1^T B2)(A2 A1^T)), products of r x r matrices."""
    return float(sum(((bx.T @ y[k][1]) * (ax @ y[k][0].T)).sum() for k, (ax, bx) in x.items()))


def cosine(x: dict, y: dict) -> float:
    """Cosine between two LoRAs' weight updates (their `_factors`)."""
    return delta_inner(x, y) / math.sqrt(max(delta_inner(x, x) * delta_inner(y, y), 1e-300))


def rel_l2(x: dict, target: dict) -> float:
    """‖dW_x − dW_target‖ / ‖dW_target‖."""
    xx, xt, tt = delta_inner(x, x), delta_inner(x, target), delta_inner(target, target)
    return math.sqrt(max(xx - 2 * xt + tt, 0.0) / max(tt, 1e-300))


def reconstruction(generate, entries: list[LibraryEntry], seen: dict[str, list[str]],
                   held: dict[str, list[str]], targets: dict[str, dict] | None = None) -> dict:
    """Does a generator reproduce the tasks it was trained on? `generate(prompts)` is its LoRA state for a batch of
    prompts; `seen[task]` are prompts it trained on, `held[task]` pool prompts of the same task it never saw.

    Compared as weight updates dW = B A per module, what a LoRA does to the model (its stored A and B are not:
    A holds nearly all of their norm, and the paper's std-weighted loss leaves it nearly unweighted). Per task:
    cosine and relative L2 error of the generated LoRA's dW against the dW of that task's checkpoint mean (A and
    B averaged separately, what a generator trained by MSE on the task's checkpoints converges to), and its
    cosine to the library mean's dW; across tasks: how far apart the generated dWs lie relative to how far apart
    the tasks' do (`distinct`, 1 when the generator separates tasks as the library does, 0 when it emits one
    LoRA for all). `targets[task]`, when given, replaces the checkpoint mean as what each task's output is compared
    with (T2L reconstructs each task's final LoRA). Label: `collapsed` (outputs about the library mean for every task: `distinct` below DISTINCT
    and cosine to the library mean at least RECONSTRUCTS), else `ok` (mean seen-task cosine at least
    RECONSTRUCTS), else `underfit`.
    """
    task_means = targets or {e.task: mean_state([e.state(p) for p in e.checkpoints]) for e in entries}  # read once
    means = {task: _factors(state) for task, state in task_means.items()}
    library_mean = _factors(mean_state(list(task_means.values())))

    cos = cosine
    def spread(vectors):  # mean distance to their centroid, from inner products alone
        gram = [[delta_inner(a, b) for b in vectors] for a in vectors]
        n = len(vectors)
        centre = sum(map(sum, gram)) / n ** 2
        return sum(math.sqrt(max(gram[i][i] - 2 * sum(gram[i]) / n + centre, 0.0)) for i in range(n)) / n

    tasks, outputs = {}, {}
    for e in entries:
        row = {}
        for kind, prompts in (("seen", seen.get(e.task)), ("held_back", held.get(e.task))):
            if not prompts:
                continue
            out = _factors(generate(prompts))
            row[kind] = {"cosine": cos(out, means[e.task]), "rel_l2": rel_l2(out, means[e.task]),
                         "cosine_to_library_mean": cos(out, library_mean)}
            if kind == "seen":
                outputs[e.task] = out
        tasks[e.task] = row
    seen_cos = sum(r["seen"]["cosine"] for r in tasks.values()) / len(tasks)
    to_mean = sum(r["seen"]["cosine_to_library_mean"] for r in tasks.values()) / len(tasks)
    library_spread = spread(list(means.values()))
    distinct = spread(list(outputs.values())) / library_spread if library_spread > 0 else float("nan")
    if distinct < DISTINCT and to_mean >= RECONSTRUCTS:
        label = "collapsed"
    elif seen_cos >= RECONSTRUCTS:
        label = "ok"
    else:
        label = "underfit"
    held_cos = [r["held_back"]["cosine"] for r in tasks.values() if "held_back" in r]
    names = sorted(means)
    pairwise = {a: {b: round(cos(means[a], means[b]), 4) for b in names if b != a} for a in names}
    return {"label": label, "space": "dW = BA", "seen_cosine": seen_cos, "library_pairwise_cosine": pairwise,
            "held_back_cosine": sum(held_cos) / len(held_cos) if held_cos else None,
            "cosine_to_library_mean": to_mean, "distinct": distinct, "tasks": tasks,
            "thresholds": {"reconstructs": RECONSTRUCTS, "distinct": DISTINCT}}
