"""Report numbers on records with known outcomes: item-unit statistics, paired tests with Holm, one-off policies."""
import math

import pandas as pd
import pytest

from harness import report, store
from harness.budget import Budget, BudgetUse

FLOPS = {"name": "b", "kind": "flops", "amount": 1e6, "horizon": 10, "one_off": "amortized"}


def _record(folder, strategy, outcomes, *, seed=0, task="t", adapt_flops=0, per_query=100, extra=0.0, labels=0,
            bound=False, shots=None, budget=FLOPS, one_off_costs=(), variant="", impl=None, after_eval=None):
    """A finished cell as the runner writes it, with the outcomes of its eval items."""
    from harness.budget import one_off_share

    cell = {"model": "m", "task": task, "strategy": strategy, "budget": budget["name"], "seed": seed}
    b = Budget(budget["name"], budget["kind"], budget["amount"], budget["horizon"], budget["one_off"], "cached")
    share = one_off_share(list(one_off_costs), b.kind, b.one_off)  # over the declared targets, as at run time
    use = BudgetUse.of(b, own=adapt_flops, queries=b.horizon * extra, one_off=share, bound=bound)
    use.after_eval = after_eval
    n = len(outcomes)
    acc = sum(outcomes) / n
    inference = {"phase": "inference", "wall_s": 1.0, "flops_measured": per_query * n, "flops_analytic": per_query * n,
                 "shared_by": None, "artifact": ""}
    costs = [dict(c) for c in one_off_costs] + [inference]
    record = {
        "schema": store.SCHEMA, "key": f"{strategy}{seed}{shots}{task}{variant}", "cell": cell,
        "config": {"model": {"name": "m"}, "task": {"name": task, "metric": "acc"}, "budget": dict(budget),
                   "strategy": {"name": strategy, "impl": impl or strategy, "shots": shots}, "seed": seed},
        "metrics": {"acc": acc, "acc_stderr": 0.0, "n": n},
        "adaptation": {"labels_used": labels, "budget": use.to_dict(), "variant": variant,
                       "per_query_extra_flops": extra},
        "costs": costs,
        "adaptation_cost": {"flops_measured": adapt_flops, "wall_s": 1.0, "flops_analytic": adapt_flops},
        "per_query": {"flops_measured": per_query, "flops_analytic": per_query or 70, "wall_s": 0.1},
        "at_horizon": {"horizon": b.horizon},
    }
    store.write_json_atomic(folder / "record.json", record)
    store.write_jsonl_atomic(folder / "samples.jsonl",
                             [{"doc_id": i, "doc_hash": f"h{i}", "acc": o} for i, o in enumerate(outcomes)])
    return folder


def _board(runs):
    board, sig = report.leaderboard(report.collect(runs_dir=runs))
    return board, sig


def test_leaderboard_paired_tests_holm_and_pareto(tmp_path):
    from scipy.stats import binomtest

    base = [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    tuned = [1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1]  # 6 wins, 0 losses against base
    icl = [0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 0]  # 2 wins, 2 losses
    _record(tmp_path / "a", "base", base)
    _record(tmp_path / "b", "lora", tuned, adapt_flops=5000, labels=8, bound=True)
    _record(tmp_path / "c", "icl", icl, per_query=900, labels=4)
    text = report.build(tmp_path / "out", runs_dir=tmp_path)
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv").set_index("strategy")
    assert board.loc["lora", "acc"] == pytest.approx(10 / 12)
    # stderr of the mean over items, by hand: 10 ones and 2 zeros, sample variance (10·(1/6)² + 2·(5/6)²)/11
    assert board.loc["lora", "acc_stderr"] == pytest.approx(math.sqrt((10 / 36 + 2 * 25 / 36) / 11 / 12))
    assert board.loc["lora", "delta_vs_base"] == pytest.approx(6 / 12)
    assert board.loc["lora", "p_vs_base"] == pytest.approx(binomtest(0, 6, 0.5).pvalue)  # 0.03125
    assert board.loc["icl", "p_vs_base"] == pytest.approx(1.0)
    assert board.loc["lora", "test_vs_base"] == "McNemar exact"
    # Holm over the two rows compared with base: 2 · 0.03125 and max(0.0625, 1 · 1.0)
    assert board.loc["lora", "p_holm"] == pytest.approx(0.0625) and board.loc["icl", "p_holm"] == pytest.approx(1.0)
    assert board.loc["lora", "total_flops_at_horizon"] == 5000 + 10 * 100
    assert board.loc["lora", "budget_status"] == "yes" and board.loc["icl", "labels_used"] == 4
    assert board.loc["lora", "ci_low"] < 10 / 12 < board.loc["lora", "ci_high"] <= 1.0
    assert "| m | t | b | lora | " in text and "| 0.833 ± 0.112 |" in text
    assert "| +0.500 | 0.0312 (McNemar) | 0.0625 |" in text
    assert (tmp_path / "out" / "accuracy_vs_flops.png").stat().st_size > 10_000


def test_identical_seeds_pool_into_the_one_seed_stderr_and_p(tmp_path):
    base = [0] * 10 + [1] * 5
    generated = [1, 1, 1] + [0] * 7 + [1] * 5  # 3 wins, 0 losses
    _record(tmp_path / "base", "base", base)
    for seed in range(6):  # six generated adapters with identical answers
        _record(tmp_path / f"d{seed}", "dnd", generated, seed=seed)
    _record(tmp_path / "one", "dnd_single", generated)
    board, sig = _board(tmp_path)
    board = board.set_index("strategy")
    six, one = board.loc["dnd"], board.loc["dnd_single"]
    assert six.seeds == 6 and six.n == 15
    assert six.acc_stderr == pytest.approx(one.acc_stderr) and six.acc_seed_std == 0.0
    assert (six.ci_low, six.ci_high) == (one.ci_low, one.ci_high)
    assert six.p_vs_base == pytest.approx(0.25) == one.p_vs_base  # not 3·6 pooled wins (p ≈ 8e-6)
    assert len(sig[sig.strategy == "dnd"]) == 6 and sig[sig.strategy == "dnd"].p.max() == pytest.approx(0.25)


def test_seeds_that_differ_use_the_permutation_test_and_settings_stay_apart(tmp_path):
    base = [0] * 8
    _record(tmp_path / "base", "base", base)
    _record(tmp_path / "s0", "icl", [1, 1, 0, 0, 0, 0, 0, 0], seed=0, shots=4)
    _record(tmp_path / "s1", "icl", [1, 1, 1, 0, 0, 0, 0, 0], seed=1, shots=4)
    _record(tmp_path / "k8", "icl", [1, 1, 1, 1, 1, 1, 1, 1], seed=0, shots=8)
    (tmp_path / "x.partial").mkdir()  # an unpublished cell never counts
    _record(tmp_path / "x.partial", "icl", [1] * 8, seed=5, shots=4)
    board, _ = _board(tmp_path)
    icl = board[board.strategy == "icl"].set_index("seeds")
    assert len(icl) == 2 and set(icl.setting) == {"shots=4", "shots=8"}
    four = icl.loc[2]
    assert four.acc == pytest.approx((2 / 8 + 3 / 8) / 2)
    assert four.acc_seed_std == pytest.approx(math.sqrt(2 * (1 / 16) ** 2))
    # per-item means 1, 1, 0.5, 0 ... against base 0: sign flips of (1, 1, 0.5): two of 8 reach |sum| = 2.5
    assert four.test_vs_base == "sign-flip permutation" and four.p_vs_base == pytest.approx(2 / 8)
    # Holm over the two rows: 8 wins of 8 gives p = 2/256; sorted 2·(2/256), then max(that, 1·0.25)
    assert icl.loc[1].p_holm == pytest.approx(4 / 256) and four.p_holm == pytest.approx(0.25)


def test_library_members_are_separate_rows(tmp_path):
    _record(tmp_path / "base", "base", [0, 1, 0, 1])
    _record(tmp_path / "m0", "dnd_member", [1, 1, 0, 1], seed=0, variant="member=arc_easy")
    _record(tmp_path / "m1", "dnd_member", [0, 0, 0, 1], seed=1, variant="member=boolq")
    board, _ = _board(tmp_path)
    members = board[board.strategy == "dnd_member"].set_index("setting")
    assert sorted(members.index) == ["member=arc_easy", "member=boolq"]
    assert (members.seeds == 1).all() and members.loc["member=arc_easy"].acc == 0.75


def _dnd(folder, task, one_off_policy="amortized", amount=1e6, seed=0, declared=3, after_eval=None):
    library = {"phase": "collect", "wall_s": 60.0, "flops_measured": 600, "flops_analytic": 600,
               "shared_by": declared, "artifact": "dnd-library/x/abc"}
    generator = {"phase": "meta_train", "wall_s": 30.0, "flops_measured": 300, "flops_analytic": 300,
                 "shared_by": declared, "artifact": "dnd-generator/def"}
    budget = {**FLOPS, "amount": amount, "one_off": one_off_policy}
    return _record(folder, "dnd", [1, 0, 1, 0], task=task, seed=seed, adapt_flops=20, per_query=5, extra=1.0,
                   budget=budget, one_off_costs=[library, generator], after_eval=after_eval)


def test_one_off_shares_follow_the_policy_and_the_targets_that_used_them(tmp_path):
    _dnd(tmp_path / "t1", "t1")
    _dnd(tmp_path / "t2", "t2")
    _dnd(tmp_path / "t2s1", "t2", seed=1)  # a second adapter of the same target is not another target
    board, _ = _board(tmp_path)
    row = board.set_index("task").loc["t1"]
    assert row.one_off_flops == pytest.approx(900 / 2)  # declared 3 targets, but 2 used them so far
    assert row.one_off_split == "÷2, 3 declared"
    assert row.total_flops_at_horizon == pytest.approx(20 + 900 / 2 + 10 * 5)  # the Pareto x-value
    _dnd(tmp_path / "t3", "t3")  # a third target lowers the first two's share
    board, _ = _board(tmp_path)
    assert board.set_index("task").loc["t1"].one_off_flops == pytest.approx(300)
    assert board.set_index("task").loc["t1"].total_flops_at_horizon == pytest.approx(20 + 300 + 50)
    out = tmp_path / "out"
    report.build(out, folders=[tmp_path / "t1"], runs_dir=tmp_path)  # one folder, shares counted over the store
    assert pd.read_csv(out / "leaderboard.csv").one_off_flops[0] == pytest.approx(300)


def test_whole_and_excluded_policies_and_overspending(tmp_path):
    _dnd(tmp_path / "w", "t1", one_off_policy="whole")
    _dnd(tmp_path / "e", "t2", one_off_policy="excluded")
    # declared 6 targets when it ran: 20 own + 10 × 1 queries + 900 / 6 = 180 fitted 200
    _dnd(tmp_path / "o", "t3", amount=200, declared=6)
    _dnd(tmp_path / "o2", "t4")
    _dnd(tmp_path / "o3", "t5")
    # evaluation measured longer outputs: its 10 queries re-priced at 9 FLOPs each
    _dnd(tmp_path / "g", "t6", amount=200, declared=6, after_eval={"queries": 90.0})
    board = _board(tmp_path)[0].set_index("task")
    assert board.loc["t1"].one_off_flops == 900 and board.loc["t2"].one_off_flops == 0
    assert board.loc["t2"].total_flops_at_horizon == 20 + 50
    # six targets used the artifacts (t1..t6, whatever their policy): t3's share is 900 / 6 = 150, which fits
    assert board.loc["t3"].one_off_flops == pytest.approx(150) and board.loc["t3"].budget_status == "no"
    assert board.loc["t6"].budget_status == "overspent by 60"  # 20 + 90 + 150 = 260 > 200: a real overspend
    # without t6, five targets remain: t3's share becomes 900 / 5 = 180 and 20 + 10 + 180 = 210 > 200
    (tmp_path / "g" / "record.json").unlink()
    board = _board(tmp_path)[0].set_index("task")
    assert board.loc["t3"].one_off_flops == pytest.approx(180)
    assert board.loc["t3"].budget_status == "overspent by 10 (fewer targets shared the one-off phases than declared)"
    assert board.loc["t4"].budget_status == "no"


def test_records_from_before_the_policy_and_unscored_items(tmp_path):
    _record(tmp_path / "base", "base", [1, 0, 1, 0])
    old = _dnd(tmp_path / "old", "t")
    record = store.read_record(old)
    # written before budgets had a one-off policy or itemized parts
    del record["config"]["budget"]["one_off"], record["adaptation"]["budget"]["parts"]
    record["adaptation"]["budget"]["spent"] = 30.0
    store.write_json_atomic(old / "record.json", record)
    samples = store.read_samples(old)
    samples[1]["acc"] = float("nan")  # an item scored NaN drops out of the row (and of its pairing with base)
    store.write_jsonl_atomic(old / "samples.jsonl", samples)
    board = _board(tmp_path)[0].set_index("strategy")
    row = board.loc["dnd"]
    assert row.one_off_policy == "excluded" and row.one_off_flops == 0 and row.budget_status == "no"
    assert row.n == 3 and row.acc == pytest.approx(2 / 3) and row.n_paired == 3
    text = report.build(tmp_path / "out", runs_dir=tmp_path)
    page = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "one-off excluded (recorded before budgets charged one-off phases)" in page and "| dnd |" in text


def test_uncounted_evaluation_falls_back_to_analytic_flops(tmp_path):
    _record(tmp_path / "a", "base", [1, 0, 1, 0], per_query=0)  # evaluated with engine.count_flops=false
    board, _ = _board(tmp_path)
    assert board.loc[0, "per_query_flops"] == 70 and board.loc[0, "total_flops_at_horizon"] == 700


def test_pareto_front():
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (0.5, 0.2), (2.0, 0.4)]
    assert report.pareto(points) == [0, 1, 3]


def test_report_on_empty_dir_is_a_clear_error(tmp_path):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="no finished records"):
        report.build(tmp_path / "out", runs_dir=tmp_path)


def test_rows_of_one_strategy_in_one_plot_panel_are_told_apart(tmp_path):
    steps = {"kind": "steps", "amount": 50, "horizon": 10, "one_off": "amortized"}
    _record(tmp_path / "base", "base", [0, 1, 0, 1], budget={**steps, "name": "steps_50"})
    _record(tmp_path / "short", "lora", [1, 1, 0, 1], budget={**steps, "name": "steps_50"})
    _record(tmp_path / "long", "lora", [1, 1, 1, 1], budget={**steps, "name": "steps_300", "amount": 300})
    board = _board(tmp_path)[0].set_index("budget")
    lora = board[board.strategy == "lora"]
    assert list(lora.setting) == ["", ""]  # alone in their budget's rows of the table
    assert sorted(lora.panel_setting) == ["budget=steps_300", "budget=steps_50"]  # but one panel: named apart
    assert lora.loc["steps_300"].p_vs_base == pytest.approx(0.5)  # paired with the base of another budget


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_report_folder_is_replaced_whole(tmp_path, monkeypatch, exchange):
    """The report is built beside its folder and swapped in: pages it no longer writes go, files it does not
    own (a README beside a committed report) stay, and what a killed build left is cleaned up."""
    if not exchange:  # where the system has no atomic exchange of two folders
        monkeypatch.setattr(report, "_exchange", lambda a, b: False)
    runs, out = tmp_path / "runs", tmp_path / "out"
    _record(runs / "a", "base", [1, 0, 1, 0])
    report.build(out, runs_dir=runs)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(first) == report.REPORT_FILES
    stale_page = sorted(report.SECTIONS)[0]  # a strategy's page, from records that are gone now
    (out / stale_page).write_text("old page\n")
    (out / "README.md").write_text("how this report was made\n")
    (tmp_path / ".out.new-0badc0de").mkdir()  # a build killed while writing
    (tmp_path / ".out.new-0badc0de" / "leaderboard.md").write_text("half")
    report.build(out, runs_dir=runs)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {**first, "README.md": b"how this report was made\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "runs"]
    # killed between the two renames of a swap without renameat2: the previous report is put back first
    held = tmp_path / ".out.old-0badc0de"
    held.mkdir()
    out.rename(held / "out")
    report._clean_leftovers(out)
    assert (out / "README.md").is_file() and not held.exists()


def test_unreadable_records_are_skipped_and_named(tmp_path, capsys):
    _record(tmp_path / "base", "base", [1, 0, 1, 0])
    _record(tmp_path / "lora", "lora", [1, 1, 1, 0])
    _record(tmp_path / "shape", "icl", [1, 1, 1, 1])
    record = store.read_record(tmp_path / "shape")
    record["cell"]["seed"] = "0"  # valid JSON, wrong shape
    (tmp_path / "shape" / "record.json").write_text(__import__("json").dumps(record))
    _record(tmp_path / "cut", "icl", [1, 1, 1, 1], seed=1)
    samples = (tmp_path / "cut" / "samples.jsonl").read_text()
    (tmp_path / "cut" / "samples.jsonl").write_text(samples[: len(samples) // 2 + 5])  # cut inside a line
    text = report.build(tmp_path / "out", runs_dir=tmp_path)
    err = capsys.readouterr().err
    assert "skipped 2 unreadable record(s): " in err
    assert f"{tmp_path / 'shape' / 'record.json'} (cell.seed is str, not int)" in err
    assert f"{tmp_path / 'cut' / 'samples.jsonl'} (samples.jsonl unreadable: " in err
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert sorted(board.strategy) == ["base", "lora"] and "| icl |" not in text
