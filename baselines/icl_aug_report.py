"""The report page of ICL-augmented fine-tuning: ICL versus fine-tuning versus fine-tuning on augmented data, per
task and test split (Lampinen et al. 2025's comparison), from whatever cells a runs folder holds.

Arms are recognized from the records, not from config names: base; ICL with the whole pool in context (`icl`,
mode full) and k-shot ICL; plain fine-tuning (`lora`, whole documents); fine-tuning on the sentence-split
originals alone (`icl_aug_ft`, no kinds); and ICL-augmented fine-tuning by its kinds (local, global, both), a
teacher-written arm named by its teacher. Per arm: accuracy with the 95 % interval over items (seeds averaged per
item first, harness.stats), then each augmented arm's difference from plain FT and from full-context ICL with the
paired test's p, Holm-corrected over every comparison of the table.
"""
from __future__ import annotations

import statistics

FT, ICL = "FT", "ICL (full context)"
INTRO = ("ICL versus fine-tuning on the same pool, per task and test split: base; ICL with the whole pool in "
         "context (a seeded subsample when it exceeds the window); k-shot ICL; plain LoRA fine-tuning on the pool's "
         "documents (FT); LoRA on the sentence-split documents alone (FT, sentences); and ICL-augmented fine-tuning "
         "(aug: local, global, or both), which adds the model's own in-context inferences to the sentence-split "
         "documents. Accuracy: mean over items of the per-item mean over seeds, 95 % interval over items and seeds. "
         "Δ: per-item paired difference and its test (McNemar for 0/1 items, sign-flip otherwise), p Holm-corrected "
         "over every comparison in the table. Cost: mean over seeds of the adaptation's measured FLOPs (augment + "
         "train), the training tokens, and what each query adds.")


def arm_of(record: dict) -> str | None:
    strategy = record["config"]["strategy"]
    impl = strategy.get("impl")
    if impl == "base":
        return "base"
    if impl == "icl":
        return ICL if strategy.get("mode") == "full" else f"ICL ({strategy.get('shots')}-shot)"
    if impl == "lora":
        return FT if strategy.get("shots") is None else f"FT ({strategy.get('shots')}-shot)"
    if impl == "icl_aug_ft":
        kinds = list((strategy.get("augment") or {}).get("kinds") or [])
        name = "FT (sentences)" if not kinds else "aug: " + " + ".join(kinds)
        teacher = (strategy.get("augment") or {}).get("generator")
        return f"{name}, teacher {teacher}" if teacher else name
    return None


ORDER = ("base", ICL, FT, "FT (sentences)", "aug: local", "aug: global", "aug: local + global")


def _rank(arm: str) -> tuple:
    return (ORDER.index(arm), arm) if arm in ORDER else (len(ORDER), arm)


def generalization_table(records) -> str | None:
    import numpy as np

    from baselines.dnd.report import _fmt
    from harness import stats
    from harness.report import headline_metric, item_scores
    from harness.store import read_samples

    cells: dict[tuple, list] = {}
    for folder, r in records:
        arm = arm_of(r)
        if arm is None:
            continue
        cells.setdefault((r["cell"]["model"], r["cell"]["budget"], r["cell"]["task"]), {}).setdefault(arm, []).append(
            (folder, r))
    rows = {k: v for k, v in cells.items() if any(a.startswith("aug") or a == "FT (sentences)" for a in v)}
    if not rows:
        return None

    def matrix(group):
        per = [item_scores(read_samples(f), headline_metric(r)) for f, r in group]
        return stats.item_matrix(per)

    arms = sorted({a for v in rows.values() for a in v}, key=_rank)
    compared = [a for a in arms if a.startswith("aug") or a == "FT (sentences)"]
    head = ["model", "budget", "task (split)", *arms, *[f"{a} − {ref}" for a in compared for ref in (FT, ICL)]]
    tests, body, costs = [], [], {}
    for (model, budget, task), by_arm in sorted(rows.items()):
        line = [model, budget, task]
        for arm in arms:
            group = by_arm.get(arm)
            if not group:
                line.append("—")
                continue
            _, m = matrix(group)
            s = stats.summarize(m)
            line.append(f"{s.mean:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}] ({s.seeds})")
            costs.setdefault(arm, []).extend(group)
        for arm in compared:
            for ref in (FT, ICL):
                if not by_arm.get(arm) or not by_arm.get(ref):
                    line.append("—")
                    continue
                ids, m = matrix(by_arm[ref] + by_arm[arm])
                k = len(by_arm[ref])
                test = stats.paired_test(np.asarray(m[:, :k].mean(axis=1)), np.asarray(m[:, k:].mean(axis=1)))
                tests.append((len(body), len(line), test["p"]))
                line.append((test["delta"], test["p"]))
        body.append(line)
    adjusted = stats.holm([p for *_, p in tests])
    for (row, col, _), p_holm in zip(tests, adjusted):
        delta, p = body[row][col]
        body[row][col] = f"{delta:+.3f} (p {_fmt(p, '.2g')}; Holm {_fmt(p_holm, '.2g')})"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in line) + " |" for line in body]
    lines += ["", "Cost per cell (mean over the cells of each arm):", "",
              "| arm | cells | augment FLOPs | train FLOPs | train tokens | augmented examples "
              "| per-query extra FLOPs | train loss, first 5 → last 5 steps |",
              "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        group = [r for _, r in costs.get(arm, [])]
        if not group:
            continue

        def mean_of(get):
            values = [get(r) for r in group]
            values = [v for v in values if v is not None]
            return statistics.fmean(values) if values else None

        phase = lambda r, name: sum(c["flops_measured"] for c in r["costs"] if c["phase"] == name)  # noqa: E731
        details = lambda r: (r.get("adaptation") or {}).get("details") or {}  # noqa: E731
        lines.append(f"| {arm} | {len(group)} | {_fmt(mean_of(lambda r: phase(r, 'augment')), '.3g')} "
                     f"| {_fmt(mean_of(lambda r: phase(r, 'train')), '.3g')} "
                     f"| {_fmt(mean_of(lambda r: details(r).get('train_tokens') or _tokens(r)), '.0f')} "
                     f"| {_fmt(mean_of(lambda r: details(r).get('augmented_examples')), '.0f')} "
                     f"| {_fmt(mean_of(lambda r: (r.get('adaptation') or {}).get('per_query_extra_flops')), '.3g')} "
                     f"| {_loss_drop(mean_of(lambda r: _ends(r, 0)), mean_of(lambda r: _ends(r, -1)))} |")
    return "\n".join(lines) + "\n"


def _ends(record: dict, end: int, n: int = 5):
    """Mean training loss over the first (end=0) or last (end=-1) n optimizer steps of a trained cell; None for an
    arm that trains nothing. The diagnostic that a fine-tuned arm learned its data, whatever it scores."""
    losses = ((record.get("adaptation") or {}).get("details") or {}).get("losses") or []
    if not losses:
        return None
    part = losses[:n] if end == 0 else losses[-n:]
    return statistics.fmean(part)


def _loss_drop(first, last) -> str:
    return "—" if first is None or last is None else f"{first:.2f} → {last:.2f}"


def _tokens(record: dict):
    """Real tokens trained on, from the train phase's details (plain LoRA cells)."""
    for cost in record.get("costs") or []:
        if cost["phase"] == "train":
            return (cost.get("details") or {}).get("real_tokens")
    return None
