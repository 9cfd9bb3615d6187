"""`harness recommend`: which strategy for one task, given the labels, compute and time a team has and the number
of queries it expects; and when paying once (tuning, generation) beats paying per query (ICL).

It reads the leaderboard (harness/report.py: a row per strategy variant and budget, seeds pooled per item, one-off
phases charged by each budget's `one_off` policy) built from a runs folder's records, or a report folder's
`leaderboard.csv`. At Q queries a row costs

    total(Q) = adaptation + one-off share + once per evaluation (an ICL prefix's cache) + Q x per query

in measured FLOPs, and the same in wall-clock seconds. A row whose adaptation or one-off share cost anything
pays once; the others (base, ICL) pay per query only. Between a pay-per-query row P and a pay-once row O the
break-even query count is where their totals meet: Q* = (fixed_O - fixed_P) / (per_query_P - per_query_O), past
which O is the cheaper; "never" when O also costs more per query, 0 when it is cheaper from the first query.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

HEADLINE = ("base", "icl", "lora_fewshot", "lora", "dnd", "t2l", "icl_aug_ft")  # what a team compares


@dataclass(frozen=True)
class Option:
    strategy: str
    budget: str
    setting: str
    metric: str
    acc: float
    ci_low: float
    ci_high: float
    labels: float
    fixed_flops: float  # adaptation + one-off share + once per evaluation
    per_query_flops: float
    fixed_s: float | None  # None where the leaderboard has no seconds per query (a report from before them)
    per_query_s: float | None
    pays_once: bool

    @property
    def name(self) -> str:
        setting = f" [{self.setting}]" if self.setting else ""
        return f"{self.strategy}{setting} @ {self.budget}"

    def total(self, queries: float, unit: str = "flops") -> float | None:
        if unit == "flops":
            return self.fixed_flops + queries * self.per_query_flops
        if self.fixed_s is None or self.per_query_s is None:
            return None
        return self.fixed_s + queries * self.per_query_s


def break_even(per_query: Option, once: Option, unit: str = "flops") -> float | None:
    """The query count at which the two totals are equal (past it, the one that is cheaper per query wins), or None
    when they never cross at a positive count (one of them is the cheaper at every count)."""
    fixed = once.total(0, unit) - per_query.total(0, unit)
    slope = (per_query.total(1, unit) - per_query.total(0, unit)) - (once.total(1, unit) - once.total(0, unit))
    if slope == 0 or fixed / slope <= 0:
        return None
    return fixed / slope


def load_board(source: Path):
    """The leaderboard of a runs folder (built from its records) or of a report folder (its leaderboard.csv)."""
    import pandas as pd

    from harness import report

    csv = source / "leaderboard.csv"
    if csv.is_file() and not any(source.rglob("record.json")):
        return pd.read_csv(csv, keep_default_na=False, na_values=[""])
    skipped: list = []
    records, _ = report.newest_per_cell(report.collect(None, source, skipped))
    if not records:
        raise HarnessError(f"no finished records (and no leaderboard.csv) under {source}: pass a runs folder "
                           "`harness run` wrote to, or a report folder")
    targets = report.artifact_targets(records)
    return report.leaderboard(records, targets)[0]


def options(board, task: str, model: str | None) -> tuple[str, list[Option]]:
    """(model, its rows for `task` as Options)."""
    if board.empty or task not in set(board.task):
        known = ", ".join(sorted(set(board.task))) if not board.empty else "none"
        raise HarnessError(f"no record for task {task!r} here (tasks with records: {known}): run `harness run "
                           f"task={task} ...` first, or pass one of those")
    rows = board[board.task == task]
    models = sorted(set(rows.model))
    if model is None:
        if len(models) > 1:
            raise HarnessError(f"task {task} has records of several models ({', '.join(models)}): pick one with "
                               "--model")
        model = models[0]
    elif model not in models:
        raise HarnessError(f"no record for model {model!r} on task {task} (models with records: "
                           f"{', '.join(models)}): pass one of those, or run it first")
    out = []
    for _, r in rows[rows.model == model].iterrows():
        once_flops = _number(r, "once_flops", 0.0)
        per_query_s = _number(r, "per_query_s", None)
        fixed_s = None if per_query_s is None else r.adapt_s + r.one_off_s + _number(r, "once_s", 0.0)
        paid = float(r.adapt_flops) + float(r.one_off_flops)
        out.append(Option(str(r.strategy), str(r.budget), _text(r, "setting"), str(r.metric), float(r.acc),
                          float(r.ci_low), float(r.ci_high), float(r.labels_used), paid + once_flops,
                          float(r.per_query_flops), fixed_s, per_query_s, paid > 0))
    return model, out


def _number(row, column: str, default):
    value = row.get(column) if hasattr(row, "get") else None
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _text(row, column: str) -> str:
    value = row.get(column)
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def check_constraints(queries: int, labels: int | None, max_flops: float | None, max_seconds: float | None) -> None:
    if queries < 0:
        raise HarnessError(f"--queries must be >= 0 (got {queries}): the number of queries you expect to serve")
    if labels is not None and labels < 0:
        raise HarnessError(f"--labels must be >= 0 (got {labels}): the labeled examples you have")
    if max_flops is not None and max_seconds is not None:
        raise HarnessError("--max-flops and --max-seconds both given: constrain one of them (the other is read off "
                           "the table)")
    for name, value in (("--max-flops", max_flops), ("--max-seconds", max_seconds)):
        if value is not None and not value > 0:
            raise HarnessError(f"{name} must be > 0 (got {value:g}): the total you can spend on adaptation and "
                               "queries together")


def rank(chosen: list[Option]) -> list[tuple[str, Option]]:
    """Options by accuracy, each with its rank. A row whose 95 % CI reaches the accuracy of the first row of its
    group ties with it: every member of a group of several shows its rank as `=k`."""
    ordered = sorted(chosen, key=lambda o: (-o.acc, o.total(1), o.name))
    groups: list[list[Option]] = []
    for option in ordered:
        if groups and option.ci_high >= groups[-1][0].acc:
            groups[-1].append(option)
        else:
            groups.append([option])
    out, position = [], 1
    for group in groups:
        label = f"={position}" if len(group) > 1 else str(position)
        out += [(label, o) for o in group]
        position += len(group)
    return out


def recommend(source: Path, task: str, queries: int, model: str | None = None, labels: int | None = None,
              max_flops: float | None = None, max_seconds: float | None = None, plot: Path | None = None) -> str:
    check_constraints(queries, labels, max_flops, max_seconds)
    if not source.is_dir():
        raise HarnessError(f"{source} is not a folder: pass the runs folder `harness run` wrote to, or a report folder")
    model, found = options(load_board(source), task, model)
    fits, excluded = [], []
    for o in found:
        why = []
        if labels is not None and o.labels > labels:
            why.append(f"needs {o.labels:g} labels > {labels}")
        total_flops, total_s = o.total(queries), o.total(queries, "seconds")
        if max_flops is not None and total_flops > max_flops:
            why.append(f"{total_flops:.3g} FLOPs at {queries} queries > {max_flops:.3g}")
        if max_seconds is not None:
            if total_s is None:
                why.append("no seconds per query in this leaderboard (regenerate it with `harness report`)")
            elif total_s > max_seconds:
                why.append(f"{total_s:.3g} s at {queries} queries > {max_seconds:g}")
        (excluded.append((o, "; ".join(why))) if why else fits.append(o))
    lines = [f"# {task} · {model} · {queries} queries", ""]
    constraints = [f"labels ≤ {labels}" if labels is not None else "",
                   f"total FLOPs ≤ {max_flops:.3g}" if max_flops is not None else "",
                   f"total seconds ≤ {max_seconds:g}" if max_seconds is not None else ""]
    lines.append("Constraints: " + (", ".join(c for c in constraints if c) or "none") + ". Total = adaptation + "
                 "one-off share (the budget's policy) + once per evaluation + queries × per query; measured FLOPs, "
                 "wall-clock seconds on the machine that ran the cell.")
    lines += ["", "| rank | strategy | score (95 % CI) | labels | pays | total FLOPs | total s |",
              "|---|---|---|---|---|---|---|"]
    for position, o in rank(fits):
        seconds = o.total(queries, "seconds")
        lines.append(f"| {position} | {o.name} | {o.acc:.3f} [{o.ci_low:.3f}, {o.ci_high:.3f}] ({o.metric}) | "
                     f"{o.labels:g} | {'once' if o.pays_once else 'per query'} | {o.total(queries):.3g} | "
                     f"{'—' if seconds is None else f'{seconds:.3g}'} |")
    if not fits:
        lines.append("| — | nothing fits the constraints | | | | | |")
    per_query = [o for o in fits if not o.pays_once]
    once = [o for o in fits if o.pays_once]
    if per_query and once:
        lines += ["", "Break-even query counts (total FLOPs): Q* is where the two totals are equal; past it the one "
                  "that costs less per query is the cheaper.", "",
                  "| pay per query | pay once | Q* | cheaper past Q* | cheaper at your queries |",
                  "|---|---|---|---|---|"]
        for p in per_query:
            for o in once:
                q = break_even(p, o)
                now = o if o.total(queries) < p.total(queries) else p
                later = o if o.per_query_flops < p.per_query_flops else p
                shown = f"{math.ceil(q):,}" if q is not None else "never (no crossing)"
                lines.append(f"| {p.name} | {o.name} | {shown} | {later.strategy if q is not None else '—'} | "
                             f"{now.strategy} |")
    if excluded:
        lines += ["", "Left out by the constraints:"] + [f"- {o.name}: {why}" for o, why in excluded]
    have = {o.strategy for o in found}
    missing = [s for s in HEADLINE if s not in have]
    if missing:
        lines += ["", "Missing to answer fully:"] + [
            f"- no record for {s} on this task: run `harness run model={model} task={task} strategy={s}`"
            for s in missing]
    if plot is not None:
        if not fits:
            raise HarnessError("nothing fits the constraints, so there is nothing to plot: loosen them or drop --plot")
        plot_totals(fits, queries, task, model, plot)
        lines += ["", f"Plot: {plot}"]
    return "\n".join(lines)


def plot_totals(found: list[Option], queries: int, task: str, model: str, path: Path) -> None:
    """Total FLOPs against the number of queries, one line per row that fits the constraints, labelled with its
    score: where the lines cross are the break-even counts; the dotted line is the queries you expect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    top = max(10 * max(queries, 1), 1000)
    qs = np.logspace(0, math.log10(top), 200)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for o in sorted(found, key=lambda o: -o.acc):
        ax.plot(qs, [o.total(q) for q in qs], linestyle="-" if o.pays_once else "--",
                label=f"{o.name}: {o.acc:.3f} [{o.ci_low:.3f}, {o.ci_high:.3f}]")
    ax.axvline(max(queries, 1), color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("queries served (dotted: yours)")
    ax.set_ylabel("total FLOPs (adaptation + one-off + queries)")
    ax.set_title(f"{task} · {model}: the total cost of each strategy as queries grow\n"
                 "solid: pays once; dashed: pays per query; legend: score [95 % CI]", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
