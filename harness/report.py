"""Leaderboard, accuracy-vs-FLOPs plot and paired significance tests, from finished records.

Statistics take the item as the unit (harness/stats.py). Costs follow each budget's `one_off` policy:
a one-off phase shared by several targets (a DnD generator's library and training) is charged
amortized over the targets that actually used it, counted from the records (so a later target lowers
everyone's share and the report says so), whole, or not at all; the totals at the horizon, the Pareto
plot, the budget column and the strategies' own pages all read the same figures.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from harness import stats, store
from harness.budget import one_off_share

GROUP = ("model", "task", "budget", "strategy", "variant")  # variant: config hash without the seed
# Extra report pages that the registered strategies contribute (Strategy.report_pages): file name → ReportPage.
# Filled when a report is built, from harness.strategy.report_pages().
SECTIONS: dict = {}


def collect(folders: list[Path] | None = None, runs_dir: Path | None = None,
            skipped: list | None = None) -> list[tuple[Path, dict]]:
    """Readable finished records of `folders` (or under `runs_dir`); the others go to `skipped` as (file, problem)."""
    skipped = [] if skipped is None else skipped
    if folders is not None:
        found = []
        for folder in folders:
            record, problem = store.load_record(folder)
            if record is not None:
                found.append((Path(folder), record))
            elif problem:
                skipped.append((Path(folder) / store.RECORD, problem))
    else:
        found = list(store.iter_records(Path(runs_dir), skipped))
    out = []
    for folder, record in found:  # the leaderboard reads every record's samples too
        problem = store.samples_problem(folder)
        if problem:
            skipped.append((folder / store.SAMPLES, problem))
        else:
            out.append((folder, record))
    return out


def newest_per_cell(records: list[tuple[Path, dict]]) -> tuple[list[tuple[Path, dict]], int]:
    """One record per cell (same config and seed): the newest; older ones were made with other inputs
    (code, versions, data: `harness runs stale`). Returns (kept, how many were left out)."""
    newest: dict[str, tuple[Path, dict]] = {}
    for folder, r in records:
        cell = json.dumps(store.identity(r.get("config", {})), sort_keys=True, default=str)
        if cell not in newest or r.get("finished_at", "") > newest[cell][1].get("finished_at", ""):
            newest[cell] = (folder, r)
    kept = sorted(newest.values(), key=lambda fr: str(fr[0]))
    return kept, len(records) - len(kept)


def artifact_targets(records: list[tuple[Path, dict]]) -> dict[str, int]:
    """How many target tasks used each shared artifact (a library LoRA, a generator), from the records."""
    users: dict[str, set] = defaultdict(set)
    for _, r in records:
        for cost in r.get("costs", []):
            if cost.get("artifact"):
                users[cost["artifact"]].add((r["cell"]["model"], r["cell"]["task"]))
    return {artifact: len(targets) for artifact, targets in users.items()}


def charged_costs(record: dict, targets: dict[str, int]) -> dict:
    """A cell's costs as the report charges them, one-off shares by its budget's policy over the targets that
    used them, and its budget re-priced with that share and with the queries priced after evaluation."""
    budget = record["config"]["budget"]
    policy = budget_policy(budget)
    shared = [c for c in record.get("costs", []) if c.get("shared_by")]
    share_flops = one_off_share(shared, "flops", policy, targets)
    share_s = one_off_share(shared, "seconds", policy, targets)
    counted = sorted({targets.get(c.get("artifact") or "", c["shared_by"]) for c in shared})
    declared = sorted({c["shared_by"] for c in shared})
    split = "" if not shared or policy != "amortized" else "÷" + "/".join(map(str, counted)) + (
        "" if counted == declared else f", {'/'.join(map(str, declared))} declared")
    cost, per_query = record["adaptation_cost"], record["per_query"]
    # evaluation run with engine.count_flops=false measured nothing: fall back to the analytic figure
    per_query_flops = per_query["flops_measured"] or per_query.get("flops_analytic", 0)
    horizon = record["at_horizon"]["horizon"]
    once = per_query.get("once_per_evaluation") or {}  # an ICL prefix's cache: paid once, not per query
    once_flops = once.get("flops_measured") or once.get("flops_analytic", 0.0)
    use = record["adaptation"].get("budget") or {}
    amount = float(use.get("amount") or budget.get("amount") or 0)
    parts = use.get("parts") or {}
    recount = False
    if parts:
        queries = (use.get("after_eval") or {}).get("queries", parts.get("queries", 0.0))
        share = {"flops": share_flops, "seconds": share_s}.get(use.get("kind"), 0.0)
        spent = parts.get("own", 0.0) + queries + share
        # over only because fewer targets used the one-off phases than were declared when the cell ran
        recount = parts.get("own", 0.0) + queries + parts.get("one_off", 0.0) <= amount * (1 + 1e-9)
    else:  # a record from before budgets were itemized
        spent = float(use.get("spent") or 0.0)
    overspent = spent - amount if amount and spent > amount * (1 + 1e-9) else 0.0
    return {"one_off_policy": policy, "one_off_flops": share_flops, "one_off_s": share_s, "one_off_split": split,
            "overspent_by_recount": bool(overspent and recount),
            "adapt_flops": cost["flops_measured"], "adapt_s": cost["wall_s"], "per_query_flops": per_query_flops,
            "per_query_s": per_query["wall_s"], "once_flops": once_flops, "once_s": once.get("wall_s", 0.0),
            "horizon": horizon,
            "total_flops_at_horizon": cost["flops_measured"] + share_flops + once_flops + horizon * per_query_flops,
            "budget_spent": spent, "budget_overspent": overspent, "budget_bound": bool(use.get("bound"))}


def data_scope(record: dict) -> dict:
    """What a record scored against the benchmark's split: its size as published (N), how many of those
    could be scored (less any carved pool), whether a pool was carved out of it, and the data's variant."""
    data = record.get("data", {})
    pool = data.get("pool", {})
    scorable = int(record.get("eval", {}).get("n_eval_split") or pool.get("n_eval") or 0)
    carved = bool(pool.get("carved"))
    size = data.get("split_size") or scorable + (len(pool.get("carved_rows") or []) if carved else 0)
    return {"split_size": int(size), "scorable": scorable, "carved": carved, "data_variant": data.get("variant") or ""}


def n_of_split(row) -> str:
    """`n / N`, with the scorable rest named when a pool was carved out of the split."""
    text = f"{int(row.n)} / {int(row.split_size)}"
    return text + (f" (pool carved; {int(row.scorable)} scorable)" if row.carved else "")


def budget_policy(budget: dict) -> str:
    """The budget's one-off policy; records from before budgets had one left one-off phases out (excluded)."""
    return budget.get("one_off", "excluded")


def headline_metric(record: dict) -> str:
    """The task's own score: `acc` (commonsense), exact_match (GSM8K), exact_match_lenient (MATH), pass@1 (code)."""
    task = (record.get("config") or {}).get("task")
    return str(task.get("metric") or "acc") if isinstance(task, dict) else "acc"


def row_variant(record: dict) -> str:
    """The row a cell belongs to: its config without the seed, and what the adaptation says it is."""
    variant = store.variant_key(record.get("config", record["cell"]))
    extra = (record.get("adaptation") or {}).get("variant")
    return f"{variant}:{extra}" if extra else variant


def item_scores(samples: list[dict], metric: str) -> dict:
    """Item → score of one cell; a sample without a numeric score is left out (stats.item_matrix drops NaN)."""
    return {(s["doc_id"], s.get("doc_hash")): float(s[metric]) for s in samples
            if isinstance(s.get(metric), (int, float, bool))}


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


SHORT = {"budget.name": "budget", "budget.one_off": "one_off"}


def setting_labels(configs: list[dict], extras: list[str]) -> list[str]:
    """What tells rows apart, in words: the config values that differ among them (e.g. `shots=16`)."""
    skip = {"seed", "runs_dir", "progress"}
    flat = [{k: v for k, v in _flatten(c).items() if k.split(".")[0] not in skip} for c in configs]
    keys = sorted({k for f in flat for k in f if len({str(g.get(k)) for g in flat}) > 1})
    keys = [k for k in keys if not (k.startswith("budget.") and k not in ("budget.name", "budget.one_off"))][:3]
    labels = []
    for f, extra in zip(flat, extras):
        parts = [f"{SHORT.get(k, k.removeprefix('strategy.'))}={f.get(k)}" for k in keys]
        labels.append(", ".join(([extra] if extra else []) + parts))
    return labels


def leaderboard(records: list[tuple[Path, dict]], targets: dict[str, int] | None = None):
    """One row per model × task × budget × strategy × variant (seeds pooled per item), and the per-seed tests."""
    import pandas as pd

    targets = artifact_targets(records) if targets is None else targets
    rows, configs = [], {}
    for folder, r in records:
        cell = r["cell"]
        metric = headline_metric(r)
        row = {**{k: cell[k] for k in GROUP if k != "variant"}, "variant": row_variant(r), "seed": cell["seed"],
               "folder": str(folder), "metric": metric, "acc": r["metrics"].get(metric),
               "labels_used": r["adaptation"].get("labels_used", 0), **data_scope(r), **charged_costs(r, targets)}
        rows.append(row)
        configs.setdefault(tuple(row[k] for k in GROUP),
                           (store.identity(r.get("config", cell)), (r.get("adaptation") or {}).get("variant", "")))
    if not rows:
        return pd.DataFrame(), pd.DataFrame()
    cells = pd.DataFrame(rows)
    samples_cache: dict[str, dict] = {}

    def scores(folder: str, metric: str) -> dict:
        if folder not in samples_cache:
            samples_cache[folder] = item_scores(store.read_samples(Path(folder)), metric)
        return samples_cache[folder]

    board_rows, per_item = [], {}
    for key, g in cells.groupby(list(GROUP), sort=True):
        metric = g.metric.iloc[0]
        items, matrix = stats.item_matrix([scores(f, metric) for f in g.folder])
        s = stats.summarize(matrix)
        per_item[key] = dict(zip(items, matrix.mean(axis=1)))
        over = g.budget_overspent.max()
        why = " (fewer targets shared the one-off phases than declared)" if over > 0 and \
            g[g.budget_overspent == over].overspent_by_recount.all() else ""
        board_rows.append({
            **dict(zip(GROUP, key)), "metric": metric, "seeds": g.seed.nunique(), "cells": len(g),
            "n": s.n, "split_size": g.split_size.iloc[0], "scorable": g.scorable.iloc[0], "carved": g.carved.iloc[0],
            "data_variant": g.data_variant.iloc[0], "acc": s.mean, "acc_stderr": s.stderr,
            "acc_seed_std": s.seed_std, "ci_low": s.ci_low,
            "ci_high": s.ci_high, "labels_used": g.labels_used.mean(), "adapt_flops": g.adapt_flops.mean(),
            "adapt_s": g.adapt_s.mean(), "one_off_policy": g.one_off_policy.iloc[0],
            "one_off_flops": g.one_off_flops.mean(), "one_off_s": g.one_off_s.mean(),
            "one_off_split": g.one_off_split.iloc[0],
            "per_query_flops": g.per_query_flops.mean(), "per_query_s": g.per_query_s.mean(),
            "once_flops": g.once_flops.mean(), "once_s": g.once_s.mean(), "horizon": g.horizon.iloc[0],
            "total_flops_at_horizon": g.total_flops_at_horizon.mean(), "budget_bound": bool(g.budget_bound.any()),
            "budget_overspent": over,
            "budget_status": f"overspent by {over:.3g}{why}" if over > 0 else
            ("yes" if g.budget_bound.any() else "no")})
    board = pd.DataFrame(board_rows)
    # The settings that tell a strategy's rows apart: within a table group, and within a plot panel (where
    # rows of several budgets at one horizon meet).
    for column, by in (("setting", ["model", "task", "budget", "strategy"]),
                       ("panel_setting", ["model", "task", "horizon", "strategy"])):
        labels = {}
        for _, g in board.groupby(by):
            keys = [tuple(r[k] for k in GROUP) for _, r in g.iterrows()]
            found = setting_labels([configs[k][0] for k in keys], [configs[k][1] for k in keys])
            labels.update({k: label if len(keys) > 1 else configs[k][1] for k, label in zip(keys, found)})
        board[column] = [labels[tuple(r[k] for k in GROUP)] for _, r in board.iterrows()]
    _compare_with_base(board, per_item)
    return board, _per_seed_tests(cells, scores)


def _base_row(board, row):
    """The base row that `row` is compared with: same model and task, the same budget where there is one."""
    bases = board[(board.model == row.model) & (board.task == row.task) & (board.strategy == "base")]
    if bases.empty:
        return None
    same = bases[bases.budget == row.budget]
    return (same if not same.empty else bases).iloc[0]


def _compare_with_base(board, per_item) -> None:
    """Δ vs base on the items both rows scored, a paired test, and Holm's correction within model × task × budget."""
    import numpy as np

    results = []
    for _, row in board.iterrows():
        base = _base_row(board, row) if row.strategy != "base" else None
        if base is None:
            results.append({})
            continue
        mine, theirs = per_item[tuple(row[k] for k in GROUP)], per_item[tuple(base[k] for k in GROUP)]
        common = sorted(set(mine) & set(theirs), key=str)
        if not common:
            results.append({})
            continue
        test = stats.paired_test(np.array([theirs[k] for k in common]), np.array([mine[k] for k in common]))
        results.append({"delta_vs_base": test["delta"], "p_vs_base": test["p"], "test_vs_base": test["test"],
                        "n_paired": test["n_paired"]})
    for col in ("delta_vs_base", "p_vs_base", "test_vs_base", "n_paired"):
        board[col] = [r.get(col, float("nan") if col != "test_vs_base" else "") for r in results]
    board["p_holm"] = float("nan")
    for _, g in board.groupby(["model", "task", "budget"]):
        board.loc[g.index, "p_holm"] = stats.holm(list(g.p_vs_base))


def _per_seed_tests(cells, scores):
    """Every cell against base's cell on the same items, seed by seed (significance.csv)."""
    import pandas as pd

    tests = []
    for _, row in cells.iterrows():
        if row.strategy == "base":
            continue
        bases = cells[(cells.model == row.model) & (cells.task == row.task) & (cells.strategy == "base")]
        if bases.empty:
            continue
        same = bases[(bases.budget == row.budget) & (bases.seed == row.seed)]
        base = (same if not same.empty else bases).iloc[0]
        items, pair = stats.item_matrix([scores(base.folder, row.metric), scores(row.folder, row.metric)])
        if items:
            result = stats.paired_test(pair[:, 0], pair[:, 1])
            tests.append({**{k: row[k] for k in GROUP}, "seed": row.seed, **result})
    return pd.DataFrame(tests)


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both cost (lower) and accuracy (higher)."""
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any((c <= cost and a >= acc) and (c < cost or a > acc) for j, (c, a) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def _point_label(row) -> str:
    return f"{row.strategy} ({row.panel_setting})" if row.panel_setting else str(row.strategy)


def plot(board, path: Path) -> None:
    """Accuracy against total FLOPs at the horizon (one-off shares by the budget's policy), one panel per
    task × model × horizon in a grid, 95 % intervals as error bars, one legend for all panels, the Pareto
    front dashed and its points ringed in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.lines import Line2D

    panels = sorted(board.groupby(["task", "model", "horizon"]).groups)  # totals compare only at one horizon
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    # One style per legend entry, the same in every panel: colour by strategy, marker by setting.
    board = board.assign(label=[_point_label(r) for _, r in board.iterrows()])
    strategies = sorted(board.strategy.unique())
    cmap = plt.get_cmap("tab10" if len(strategies) <= 10 else "tab20")
    markers = "osD^vP*Xh<>p"
    styles = {}
    for i, s in enumerate(strategies):
        for j, label in enumerate(sorted(board[board.strategy == s].label.unique())):
            styles[label] = (cmap(i % cmap.N), markers[j % len(markers)])
    entries = list(styles) + ["Pareto front"]
    legend_cols = min(4, len(entries))
    legend_rows = math.ceil(len(entries) / legend_cols)
    legend_h = 0.22 * legend_rows + 0.3  # inches
    height = 3.7 * nrows + legend_h + 0.4
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, height), squeeze=False)
    for ax, (task, model, horizon) in zip(axes.flat, panels):
        sub = board[(board.task == task) & (board.model == model) & (board.horizon == horizon)].reset_index(drop=True)
        pts = list(zip(sub.total_flops_at_horizon, sub.acc))
        front = set(pareto(pts))
        for i, row in sub.iterrows():
            colour, marker = styles[row.label]
            yerr = None if math.isnan(row.ci_low) else [[max(0.0, row.acc - row.ci_low)],
                                                        [max(0.0, row.ci_high - row.acc)]]
            ax.errorbar(row.total_flops_at_horizon, row.acc, yerr=yerr, fmt=marker, color=colour, markersize=8,
                        capsize=3, elinewidth=1, alpha=0.9, markeredgecolor="black" if i in front else colour,
                        markeredgewidth=1.8 if i in front else 0.5, zorder=3 if i in front else 2)
        f = sorted(pts[i] for i in front)
        ax.plot([p[0] for p in f], [p[1] for p in f], "k--", linewidth=0.8, zorder=1)
        xs = sub.total_flops_at_horizon
        if (xs > 0).all() and xs.max() / xs.min() > 20:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 3.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.set_xlabel(f"total FLOPs: adaptation + one-off share + {int(horizon)} queries", fontsize=8)
        ax.set_ylabel(f"{sub.metric.iloc[0]} (95 % CI)")
        ax.set_title(f"{task} · {model} · {int(horizon)} queries", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], linestyle="", marker=styles[e][1], color=styles[e][0], markersize=7) for e in styles]
    handles.append(Line2D([], [], linestyle="--", color="black", marker="o", markerfacecolor="white",
                          markeredgecolor="black", markeredgewidth=1.8, linewidth=0.8))
    fig.legend(handles, entries, loc="lower center", ncol=legend_cols, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    policies = ", ".join(sorted(board.one_off_policy.unique()))
    fig.suptitle(f"Score against total FLOPs at the horizon (one-off phases: {policies})", fontsize=10)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1 - 0.35 / height))
    fig.savefig(path, dpi=120, bbox_inches="tight")  # a long legend label may reach past the figure
    plt.close(fig)


def _fmt(x, spec: str = ".3g") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _budgets_line(records: list[tuple[Path, dict]]) -> str:
    seen = {}
    for _, r in records:
        b = r["config"]["budget"]
        policy = budget_policy(b) + ("" if "one_off" in b else " (recorded before budgets charged one-off phases)")
        icl = b.get("icl_pricing", "recompute (recorded before ICL prefixes were cached)")
        seen[b["name"]] = (f"`{b['name']}`: {b['kind']} ≤ {b['amount']:g}, horizon {b['horizon']}, one-off {policy}, "
                           f"ICL prefix priced {icl}")
    return "; ".join(seen[k] for k in sorted(seen))


def _one_off(row) -> str:
    """The one-off share, and over how many targets it was split (counted from the records)."""
    if not row.one_off_flops:
        return "—"
    return _fmt(row.one_off_flops) + (f" ({row.one_off_split})" if row.one_off_split else "")


def markdown(board) -> str:
    head = ("| model | task | budget | strategy | config | score ± stderr | 95 % CI | ± seed std | n / N | seeds "
            "| labels "
            "| adapt FLOPs | adapt s | one-off FLOPs | per-query FLOPs | total FLOPs @ horizon | Δ vs base "
            "| p (test) | p Holm | budget bound |")
    lines = [head, "|" + "---|" * 20]
    tests = {"McNemar exact": "McNemar", "sign-flip permutation": "sign-flip"}
    for _, r in board.iterrows():
        delta = r.get("delta_vs_base")
        has_delta = delta is not None and not (isinstance(delta, float) and math.isnan(delta))
        strategy = f"{r.strategy} ({r.setting})" if r.setting else r.strategy
        lines.append(
            f"| {r.model} | {r.task}{f' ({r.data_variant})' if r.data_variant else ''} | {r.budget} | {strategy} "
            f"| {r.variant.split(':')[0]} "
            f"| {_fmt(r.acc, '.3f')} ± {_fmt(r.acc_stderr, '.3f')}{'' if r.metric == 'acc' else f' ({r.metric})'} "
            f"| [{_fmt(r.ci_low, '.3f')}, {_fmt(r.ci_high, '.3f')}] | {_fmt(r.acc_seed_std, '.3f')} "
            f"| {n_of_split(r)} | {int(r.seeds)} | {r.labels_used:g} | {_fmt(r.adapt_flops)} | {r.adapt_s:.1f} "
            f"| {_one_off(r)} "
            f"| {_fmt(r.per_query_flops)} | {_fmt(r.total_flops_at_horizon)} (h={int(r.horizon)}) "
            f"| {f'{delta:+.3f}' if has_delta else '—'} "
            f"| {f'{r.p_vs_base:.3g} ({tests.get(r.test_vs_base, r.test_vs_base)})' if has_delta else '—'} "
            f"| {_fmt(r.p_holm) if has_delta else '—'} | {r.budget_status} |")
    return "\n".join(lines) + "\n"


INTRO = (
    "Score: the task's metric on the cell's eval items (lm-eval `acc` for multiple choice, exact match for math, "
    "pass@1 for code; named in brackets when not acc). n / N: items scored of the evaluation split as published; "
    "where the adaptation pool was carved out of that split (no train split to take it from), fewer are scorable, "
    "so the row is not the published benchmark's full number. A task name with a bracket is a variant of the "
    "benchmark's standard form (e.g. BoolQ without its passages: question-only). Seeds (generated adapters, "
    "demonstration draws, training "
    "seeds) are averaged per item first: score ± stderr come from the per-item means, `± seed std` is the spread "
    "of the per-seed scores, and the 95 % CI is a percentile bootstrap over items with seeds resampled within each "
    "replicate (2000 replicates, fixed seed). Δ vs base: paired difference on the items both rows scored; p: "
    "McNemar's exact test when every per-item score is 0 or 1 (one binary seed, or seeds that agree), else a "
    "sign-flip permutation test on the per-item differences; p Holm: Holm-corrected over the rows compared with "
    "base within one model × task × budget. Adapt FLOPs and s: what this target paid alone. One-off FLOPs: its "
    "share of phases shared by several targets (a DnD generator's library and training) by the budget's policy "
    "(amortized over the targets that used them, counted from the records and shown as ÷N, with the number declared "
    "when the cell ran if it differs; whole; excluded). Total FLOPs at "
    "horizon = adapt + one-off share + horizon × per-query. FLOPs are measured (FlopCounterMode; analytic where "
    "counting was turned off). Budget bound: `yes` when the budget stopped the work; `overspent by X` when the "
    "spend, re-priced after evaluation (measured output lengths, the one-off share above), exceeds the amount "
    "(with the reason when only the recount of targets made it so). "
    "`config` hashes the cell's configuration without its seed; a bracket after the strategy names the settings "
    "that tell its rows apart.")


def build(out_dir: Path, folders: list[Path] | None = None, runs_dir: Path | None = None) -> str:
    """Write the report for `folders` (or every record under `runs_dir`); one-off shares are counted over
    every record under `runs_dir` when it is given, so targets outside `folders` lower them too.

    The report folder is replaced whole (write_folder): a killed build leaves the previous report as it was.
    Records that cannot be read are left out and named."""
    from harness.errors import HarnessError

    skipped: list = []
    records, superseded = newest_per_cell(collect(folders, runs_dir, skipped))
    if folders is not None and runs_dir is not None:
        everything = newest_per_cell(collect(None, runs_dir, skipped))[0]
    else:
        everything = records
    unreadable = _say_skipped(skipped)
    if not records:
        where = f"no finished records under {runs_dir or 'the given folders'}"
        raise HarnessError(f"{where} that can be read ({unreadable} unreadable, named above): fix or delete them, "
                           "or run `harness run` again" if unreadable else f"{where}: run `harness run` first")
    if superseded:
        where = f" {runs_dir}" if runs_dir else ""
        print(f"[harness] report: {superseded} older record(s) of the same cells left out (made with other code, "
              f"versions or data: `harness runs stale{where}` lists them)", file=sys.stderr)
    targets = artifact_targets(everything)
    for _, r in records:  # strategies' report pages read the same charged costs as the leaderboard
        r["report"] = {"artifact_targets": targets, **charged_costs(r, targets)}
    board, sig = leaderboard(records, targets)
    text = markdown(board)
    page = f"# Leaderboard\n\n{INTRO}\n\nBudgets: {_budgets_line(records)}.\n\n{text}"
    from harness.strategy import report_pages

    SECTIONS.update(report_pages())
    pages = {}
    for filename, sec in SECTIONS.items():
        section = sec.render(records)
        if section:
            pages[filename] = f"# {sec.title}\n\n{sec.intro}\n\n{section}"
            text += f"\n## {sec.title}\n\n{section}"

    def write(folder: Path) -> None:
        (folder / "leaderboard.md").write_text(page)
        board.to_csv(folder / "leaderboard.csv", index=False)
        sig.to_csv(folder / "significance.csv", index=False)
        plot(board, folder / "accuracy_vs_flops.png")
        for filename, content in pages.items():
            (folder / filename).write_text(content)

    write_folder(Path(out_dir), write, REPORT_FILES | set(SECTIONS))
    return text


REPORT_FILES = {"leaderboard.md", "leaderboard.csv", "significance.csv", "accuracy_vs_flops.png"}


def _say_skipped(skipped: list) -> int:
    """Name the records the report leaves out because they cannot be read; returns how many."""
    if not skipped:
        return 0
    unique = list(dict.fromkeys((str(path), problem) for path, problem in skipped))
    names = "; ".join(f"{path} ({problem})" for path, problem in unique[:5])
    more = f"; and {len(unique) - 5} more" if len(unique) > 5 else ""
    print(f"[harness] report: skipped {len(unique)} unreadable record(s): {names}{more}: fix or delete them "
          "(`harness run` with the same config runs such a cell again)", file=sys.stderr)
    return len(unique)


def write_folder(out: Path, write, owned: set[str]) -> None:
    """Build a folder with `write(folder)` beside `out`, then swap it in: readers, and a build killed at any
    point, see the complete old folder or the complete new one. Files in the old folder that the build does not
    own (`owned`: names it writes, whether or not it writes them this time), such as a README beside a committed
    report, are carried over. Leftovers of a killed build are removed first."""
    from harness.errors import HarnessError

    fix = "pass --out a folder you can write (for `harness run`: set HARNESS_RUNS_DIR)"
    out = out.resolve() if out.is_symlink() else out  # the folder a link names is replaced, the link stays
    # the new folder is made beside `out`: its parent must take files, not only `out`
    problem = f"{out} is a file, not a folder" if out.is_file() else store.writable_problem(out.parent)
    if problem:
        raise HarnessError(f"cannot write the report to {out} ({problem}): {fix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out.parent):
        _clean_leftovers(out)
        new = None
        try:
            new = _sibling(out, "new")
            if out.is_dir():
                shutil.copymode(out, new)
            write(new)
            if out.is_dir():
                for old in out.iterdir():
                    if old.name not in owned:
                        (shutil.copytree if old.is_dir() else shutil.copy2)(old, new / old.name)
            for file in new.iterdir():  # on disk before the swap makes them the report
                if file.is_file():
                    with open(file, "rb") as fh:
                        os.fsync(fh.fileno())
            _swap_in(new, out)
        except Exception as exc:
            if new is not None:
                shutil.rmtree(new, ignore_errors=True)
            problem = store.write_problem(exc, out.parent) or (exc.strerror if isinstance(exc, OSError) else None)
            if problem:
                raise HarnessError(f"cannot write the report to {out} ({problem}): {fix}") from None
            raise


def _swap_in(new: Path, out: Path) -> None:
    """Make `new` the folder `out`: one atomic exchange where the system offers it, else two renames (a build
    killed between them leaves the old folder under a `.old-` name, which the next build puts back)."""
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # now the old folder
        return
    old = _sibling(out, "old")
    os.rename(out, old / out.name)
    os.rename(new, out)
    shutil.rmtree(old)


def _sibling(out: Path, kind: str) -> Path:
    """A new, empty folder beside `out` named as a leftover of this build (`.NAME.new-*`, `.NAME.old-*`)."""
    import secrets

    while True:
        path = out.parent / f".{out.name}.{kind}-{secrets.token_hex(4)}"
        try:
            path.mkdir()  # with the umask's permissions, like any folder the report would have made
            return path
        except FileExistsError:
            continue


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not offered."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _clean_leftovers(out: Path) -> None:
    """Remove what a killed build left beside `out`; put the old folder back if it was killed mid-swap."""
    for leftover in sorted(out.parent.glob(f".{out.name}.old-*")):
        saved = leftover / out.name
        if saved.is_dir() and not out.exists():
            os.rename(saved, out)
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out.parent.glob(f".{out.name}.new-*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Serialize report builds in one folder (each cleans up the others' leftovers); a no-op where the file
    system has no locks."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)
