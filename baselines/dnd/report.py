"""DnD's report sections: the leave-one-out table (with its controls) and the speedup table.

Both read finished records only. The leave-one-out table puts, per held-out task, DnD's generated
adapters (mean ± std over prompt batches) beside base, every library LoRA (average and best; the
best is chosen on the test items, an oracle), the parameter mean of the library checkpoints and
the nearest library LoRA, with how far the generated weights lie from the library mean: a generator
that collapsed to its training average shows DnD ≈ dnd_mean in accuracy and distance ≈ 0.
"""
from __future__ import annotations

import math
import statistics

DND, MEMBER, MEAN, NEAREST = "dnd", "dnd_member", "dnd_mean", "dnd_nearest"


def _cells(records):
    from harness.budget import one_off_share
    from harness.report import budget_policy, headline_metric
    from harness.store import variant_key

    out = []
    for folder, r in records:
        a = r["adaptation"]
        metric = headline_metric(r)  # the task's own metric (acc, exact_match, accuracy ...)
        costs = r.get("costs") or []
        targets = (r.get("report") or {}).get("artifact_targets")  # the targets that used each artifact
        shared = [c for c in costs if c.get("shared_by")]
        out.append({"folder": folder, **r["cell"], "impl": r["config"]["strategy"].get("impl"),
                    "acc": r["metrics"].get(metric), "se": r["metrics"].get(f"{metric}_stderr"),
                    "n": r["metrics"].get("n"),
                    "details": a.get("details") or {}, "labels": a.get("labels_used", 0),
                    "adapt_s": r["adaptation_cost"]["wall_s"], "adapt_flops": r["adaptation_cost"]["flops_measured"],
                    "one_off": {"wall_s": one_off_share(shared, "seconds", "whole"),
                                "flops_measured": one_off_share(shared, "flops", "whole")},
                    "one_off_amortized": {"wall_s": one_off_share(shared, "seconds", "amortized", targets),
                                          "flops_measured": one_off_share(shared, "flops", "amortized", targets)},
                    "policy": budget_policy(r["config"]["budget"]),
                    "users": [(c["phase"], (targets or {}).get(c.get("artifact") or "", c["shared_by"]))
                              for c in shared],
                    "metric": metric,
                    "per_query_extra": a.get("per_query_extra_flops", 0.0),
                    "mode": r["config"]["strategy"].get("mode"), "batch": r["config"]["strategy"].get("batch_size"),
                    "variant": variant_key(r["config"])})
    return out


def _score(cells) -> tuple[float, float]:
    """Mean and stderr of cells that share items, seeds averaged per item first (harness.stats)."""
    from harness import stats
    from harness.report import item_scores
    from harness.store import read_samples

    per_seed = [item_scores(read_samples(c["folder"]), c["metric"]) for c in cells]
    _, matrix = stats.item_matrix(per_seed)
    s = stats.summarize(matrix)
    return s.mean, s.stderr


def paired(reference, cells) -> tuple[float | None, float | None]:
    """(mean difference, p) of `cells` against `reference` (each side's cells averaged per item first: a method's
    seeds, or the library's LoRAs) on the items both scored, by harness.stats' paired test."""
    import numpy as np

    from harness import stats
    from harness.report import item_scores
    from harness.store import read_samples

    if not reference or not cells:
        return None, None
    per = [item_scores(read_samples(c["folder"]), c["metric"]) for c in [*reference, *cells]]
    ids, matrix = stats.item_matrix(per)
    if not ids:
        return None, None
    k = len(reference)
    test = stats.paired_test(np.asarray(matrix[:, :k].mean(axis=1)), np.asarray(matrix[:, k:].mean(axis=1)))
    return test["delta"], test["p"]


def _fmt(x, spec=".3f"):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def loo_table(records) -> str | None:
    cells = [c for c in _cells(records) if c["impl"] in ("dnd", "dnd_control", "base")]
    # One row per DnD configuration (seeds pooled), beside the controls of its model, task and budget.
    targets = sorted({(c["model"], c["budget"], c["task"], c["variant"]) for c in cells if c["impl"] == "dnd"})
    if not targets:
        return None
    lines = ["| model | held-out task | DnD config | base | library LoRAs: avg | best (oracle) | library mean | nearest | "
             "DnD: mean ± std | adapters | DnD − library avg (p) | DnD − base (p) | DnD − library mean (p) "
             "| ‖DnD − mean‖ / ‖mean‖ | library spread | ‖DnD‖ / ‖mean‖ | generator: seen-task cos (label) |",
             "|" + "---|" * 17]
    avgs = {k: [] for k in ("base", "avg", "best", "mean", "nearest", "dnd")}
    for model, budget, task, variant in targets:
        mine = [c for c in cells if (c["model"], c["budget"], c["task"]) == (model, budget, task)
                and (c["impl"] != "dnd" or c["variant"] == variant)]
        pick = lambda f: [c for c in mine if f(c)]  # noqa: E731
        base = pick(lambda c: c["impl"] == "base")
        members = pick(lambda c: c["impl"] == "dnd_control" and c["mode"] == "member")
        mean = pick(lambda c: c["impl"] == "dnd_control" and c["mode"] == "mean")
        nearest = pick(lambda c: c["impl"] == "dnd_control" and c["mode"] == "nearest")
        dnd = pick(lambda c: c["impl"] == "dnd")
        accs = [c["acc"] for c in dnd]
        dnd_mean = statistics.fmean(accs)
        dnd_std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        member_accs = {c["details"].get("member_task"): c["acc"] for c in members}
        avg = statistics.fmean(member_accs.values()) if member_accs else None
        best_task = max(member_accs, key=member_accs.get) if member_accs else None
        collapse = [c["details"].get("collapse") or {} for c in dnd]
        dist = statistics.fmean(x["rel_dist_to_library_mean"] for x in collapse if x) if any(collapse) else None
        spread = statistics.fmean(x["library_spread"] for x in collapse if x) if any(collapse) else None
        norm = statistics.fmean(x["l2_norm"] / x["library_mean_l2_norm"] for x in collapse if x) \
            if any(collapse) else None
        values = {"base": base[0]["acc"] if base else None, "avg": avg,
                  "best": member_accs[best_task] if best_task else None,
                  "mean": mean[0]["acc"] if mean else None, "nearest": nearest[0]["acc"] if nearest else None,
                  "dnd": dnd_mean}
        for k, v in values.items():
            if v is not None:
                avgs[k].append(v)
        near_task = nearest[0]["details"].get("nearest_task") if nearest else None
        _, p_lib = paired(members, dnd)  # per item: the six adapters' mean vs the library LoRAs' mean
        d_base, p_base = paired(base, dnd)
        d_mean, p_mean = paired(mean, dnd)  # did the generator do more than emit the library's average?
        lib_text = f"{dnd_mean - avg:+.3f} ({_fmt(p_lib, '.3g')})" if avg is not None else "—"
        checks = [c["details"].get("reconstruction") for c in dnd if c["details"].get("reconstruction")]
        labels = sorted({x["label"] for x in checks})
        recovered = [x["gain_recovered"] for x in checks if x.get("gain_recovered") is not None]
        generator = (f"{statistics.fmean(x['seen_cosine'] for x in checks):.3f} ({'/'.join(labels)})" if checks
                     else "— (not checked)")
        if recovered:
            generator += f"; gain recovered {statistics.fmean(recovered):.0%}"
        lines.append(
            f"| {model} | {task} | {variant} | {_fmt(values['base'])} | {_fmt(avg)} ({len(member_accs)}) "
            f"| {_fmt(values['best'])}{f' ({best_task})' if best_task else ''} | {_fmt(values['mean'])} "
            f"| {_fmt(values['nearest'])}{f' ({near_task})' if near_task else ''} "
            f"| {dnd_mean:.3f} ± {_fmt(dnd_std)} | {len(accs)} "
            f"| {lib_text} "
            f"| {_fmt(d_base, '+.3f')} ({_fmt(p_base, '.3g')}) | {_fmt(d_mean, '+.3f')} ({_fmt(p_mean, '.3g')}) "
            f"| {_fmt(dist)} | {_fmt(spread)} "
            f"| {_fmt(norm)} | {generator} |")
    if len(targets) > 1:
        m = {k: (statistics.fmean(v) if v else None) for k, v in avgs.items()}
        diff = m["dnd"] - m["avg"] if m["avg"] is not None else None
        lines.append(f"| | **average** | | {_fmt(m['base'])} | {_fmt(m['avg'])} | {_fmt(m['best'])} | {_fmt(m['mean'])} "
                     f"| {_fmt(m['nearest'])} | {_fmt(m['dnd'])} | | {_fmt(diff, '+.3f')} | | | | | | |")
    return "\n".join(lines) + "\n"


def library_table(records) -> str | None:
    """Each library LoRA the DnD cells used (one row per model, task and library entry): its own-task accuracy
    against base with the paired test, whether it beats base, how far its saved trajectory moves; then, per model,
    the cosine between the tasks' mean weight updates."""
    cells = [c for c in _cells(records) if c["impl"] == "dnd"]
    rows, pairs = {}, {}
    for c in cells:
        for task, check in (c["details"].get("library_checks") or {}).items():
            rows[(c["model"], task, check.get("entry"))] = check
        matrix = (c["details"].get("reconstruction") or {}).get("library_pairwise_cosine") or {}
        for a, row in matrix.items():
            for b, value in row.items():
                pairs.setdefault(c["model"], {})[(a, b)] = value
    if not rows:
        return None
    lines = ["| model | library task | entry | items | base | library LoRA | Δ | p (test) | beats base "
             "| trajectory steps | first–last cos | cos to mean | rel. L2 to mean |", "|" + "---|" * 13]
    for (model, task, entry), check in sorted(rows.items()):
        own, traj = check.get("own_task"), check.get("trajectory") or {}
        if own:
            beats = "yes" if own["beats_base"] else "**no** (flagged)"
            own_cells = (f"{own['n']} | {own['base']:.3f} ± {_fmt(own['base_stderr'])} | {own['lora']:.3f} ± "
                         f"{_fmt(own['lora_stderr'])} | {own['delta']:+.3f} | {own['p']:.3g} ({own['test']}) | {beats}")
        else:
            own_cells = "— | — | — | — | — | not checked (collect.check_items=0)"
        lines.append(f"| {model} | {task} | {entry} | {own_cells} | {traj.get('steps', '—')} "
                     f"| {_fmt(traj.get('first_last_cosine'))} | {_fmt(traj.get('cosine_to_mean'))} "
                     f"| {_fmt(traj.get('rel_l2_to_mean'))} |")
    for model, values in sorted(pairs.items()):
        names = sorted({a for a, _ in values} | {b for _, b in values})
        lines += ["", f"Cosine between the library tasks' mean weight updates (dW = BA), {model}:", "",
                  "| | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for a in names:
            lines.append(f"| {a} | " + " | ".join("1" if a == b else _fmt(values.get((a, b)), ".2f") for b in names)
                         + " |")
    return "\n".join(lines) + "\n"


def _setting(c) -> str:
    d = c["details"]
    if c["impl"] == "icl":
        return f"k={d.get('shots_used')}" + (f" (of {d.get('shots_requested')})" if d.get("shots_used") !=
                                              d.get("shots_requested") else "")
    if c["impl"] == "lora":
        return (f"k={d.get('pool_examples')}, " if d.get("mode") == "few-shot" else "full-shot, ") + \
            f"{d.get('steps')} steps × batch {c['batch']}"
    return ""


def speedup_table(records) -> str | None:
    cells = _cells(records)
    for c in cells:
        c["row"] = (c["strategy"], c["budget"], _setting(c))
    groups = sorted({(c["model"], c["task"]) for c in cells if c["impl"] == "dnd"})
    out = []
    for model, task in groups:
        mine = [c for c in cells if (c["model"], c["task"]) == (model, task)]
        others = [c for c in mine if c["impl"] in ("lora", "icl", "base")]
        dnd = [c for c in mine if c["impl"] == "dnd"]
        if dnd:  # one DnD configuration per grid: the one with the most generated adapters
            counts = statistics.multimode(c["variant"] for c in dnd)
            dnd = [c for c in dnd if c["variant"] == sorted(counts)[0]]
        if not any(c["impl"] in ("lora", "icl") for c in others):
            continue  # no tuning or ICL cell to compare with: a leave-one-out target, not a speedup grid
        gen_s = statistics.fmean(c["adapt_s"] for c in dnd)
        gen_f = statistics.fmean(c["adapt_flops"] for c in dnd)
        one_s = statistics.fmean(c["one_off"].get("wall_s", 0) for c in dnd)
        one_f = statistics.fmean(c["one_off"].get("flops_measured", 0) for c in dnd)
        am_s = statistics.fmean(c["one_off_amortized"].get("wall_s", 0) for c in dnd)
        am_f = statistics.fmean(c["one_off_amortized"].get("flops_measured", 0) for c in dnd)
        shared: dict[str, set] = {}
        for c in dnd:
            for phase, n in c["users"]:
                shared.setdefault(phase, set()).add(n)
        shared_text = ", ".join(f"{phase} ÷ {'/'.join(map(str, sorted(ns)))}" for phase, ns in sorted(shared.items()))
        accs = [c["acc"] for c in dnd]
        policy = {c["policy"] for c in dnd}
        lines = [f"### {task} · {model}\n",
                 "| strategy | setting | acc ± stderr | labels | wall s | FLOPs | extra FLOPs/query "
                 "| × wall vs DnD | × FLOPs vs DnD | × wall vs DnD+amortized | × FLOPs vs DnD+amortized |",
                 "|" + "---|" * 11]
        dnd_acc, dnd_se = _score(dnd)
        mark = {p: " ← budget's policy" for p in policy}
        rows = [(f"DnD (generation only){mark.get('excluded', '')}", gen_s, gen_f),
                (f"DnD + one-off amortized ({shared_text} targets that used them){mark.get('amortized', '')}",
                 gen_s + am_s, gen_f + am_f),
                (f"DnD + whole one-off (collect + meta_train){mark.get('whole', '')}", gen_s + one_s, gen_f + one_f)]
        for name, s, f in rows:
            lines.append(f"| {name} | M={len(accs)} adapters | {dnd_acc:.3f} ± {dnd_se:.3f} "
                         f"(std {_fmt(statistics.stdev(accs) if len(accs) > 1 else float('nan'))}) | 0 | {s:.3g} "
                         f"| {f:.3g} | {_fmt(dnd[0]['per_query_extra'], '.3g')} "
                         f"| {s / gen_s:.3g} | {f / gen_f:.3g} | {s / (gen_s + am_s):.3g} | {f / (gen_f + am_f):.3g} |")
        order = {v: min((c["labels"], c["adapt_flops"]) for c in others if c["row"] == v)
                 for v in {c["row"] for c in others}}
        variants = sorted(order, key=lambda v: (v[0], order[v]))
        for v in variants:
            vs = [c for c in others if c["row"] == v]
            acc, se = _score(vs)
            s = statistics.fmean(c["adapt_s"] for c in vs)
            f = statistics.fmean(c["adapt_flops"] for c in vs)
            extra = statistics.fmean(c["per_query_extra"] for c in vs)
            ratio = lambda x, y: "—" if not x else f"{x / y:.3g}"  # noqa: E731
            lines.append(f"| {v[0]} | {v[2] or v[1]} | {acc:.3f} ± {se:.3f} | {statistics.fmean(c['labels'] for c in vs):g} "
                         f"| {s:.3g} | {f:.3g} | {extra:.3g} | {ratio(s, gen_s)} | {ratio(f, gen_f)} "
                         f"| {ratio(s, gen_s + am_s)} | {ratio(f, gen_f + am_f)} |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out) if out else None


LOO_INTRO = ("Per held-out task: accuracy on the same eval items. Library LoRAs: each library task's final LoRA "
             "scored on the held-out task (count in brackets); best is chosen on these test items (an oracle). "
             "Library mean: the parameter mean (A and B separately) of every library checkpoint. Nearest: the "
             "library LoRA whose prompts embed closest to the target's. DnD: mean ± std over generated adapters "
             "(one per prompt batch). DnD − library avg, DnD − base and DnD − library mean: the difference of means, "
             "with the p of "
             "the paired test on the items both scored (each side averaged per item first: the generated "
             "adapters, the library LoRAs; McNemar for 0/1 items, else a sign-flip permutation test). ‖DnD − mean‖/‖mean‖: distance of the generated weights from the library mean; "
             "library spread: the same for the library's own LoRAs; ‖DnD‖/‖mean‖: the generated weights' norm relative to "
             "the library mean's. DnD ≈ library mean in both accuracy and weights means the generator collapsed to its "
             "training average; a distance near 1 with a small norm means it has not learned the weights at all. "
             "Generator: does it reproduce the tasks it trained on? The cosine between the weight update (dW = BA) "
             "of the LoRA it generates from prompts of each library task and that of the task's checkpoint mean, "
             "averaged over the library; `ok` at "
             "0.9 or more, `collapsed` when it emits about the library mean for every task, else `underfit`; "
             "gain recovered: on the library tasks whose LoRA beats base on their own items, the share of that gain "
             "the generated LoRAs reach there (sum of generated − base over sum of library LoRA − base) "
             "(the per-task rows, and held-back prompts of the same tasks, are in the generator's generator.json). "
             "A held-out result from a generator that is not `ok` says nothing about DnD.")
LIBRARY_INTRO = ("The LoRAs DnD's generators learn from. Each library LoRA is scored on its own task's eval items "
                 "against base (accuracy ± stderr, the paired test of the difference); one that does not beat base "
                 "there (p < 0.05) is flagged: a generator cannot learn a useful adapter from it. Trajectory: the "
                 "saved steps the generator trains on, compared as weight updates dW = BA: the cosine between the "
                 "first and last, and each step's mean cosine and relative L2 distance to their mean (identical "
                 "steps give 1, 1, 0). The matrix: how alike the tasks' mean LoRAs are (near 0: the generator must "
                 "tell the tasks apart; near 1: one LoRA would serve them all).")
SPEEDUP_INTRO = ("Wall-clock and FLOPs (measured) of adaptation on this machine. DnD generation is one encoder + "
                 "decoder pass; its one-off phases (collecting the LoRA library, training the generator) are shown "
                 "excluded, amortized over the targets that used them (counted from the records) and whole; the "
                 "arrow marks the view the DnD cells' budget charges. Speedup = the row's cost ÷ DnD's cost. ICL "
                 "has no adaptation step: it pays its demonstrations on every query (extra FLOPs/query), so its "
                 "speedup columns are empty. acc ± stderr: seeds (generated adapters) averaged per item first, "
                 "stderr over items.")
