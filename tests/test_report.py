"""Report numbers: paired tests, Pareto front and leaderboard columns, on records with known outcomes."""
import math

import pytest

from harness import report, store


def _record(folder, strategy, outcomes, adapt_flops, per_query, labels=0, bound=False, seed=0, shots=None):
    cell = {"model": "m", "task": "t", "strategy": strategy, "budget": "b", "seed": seed}
    n = len(outcomes)
    acc = sum(outcomes) / n
    se = math.sqrt(sum((o - acc) ** 2 for o in outcomes) / (n - 1) / n)
    record = {
        "schema": store.SCHEMA, "key": f"{strategy}{seed}{shots}", "cell": cell,
        "config": {**cell, "strategy": {"name": strategy, "shots": shots}},
        "metrics": {"acc": acc, "acc_stderr": se, "acc_norm": acc, "n": n},
        "adaptation": {"labels_used": labels, "budget": {"spent": adapt_flops, "bound": bound}},
        "adaptation_cost": {"flops_measured": adapt_flops, "wall_s": 1.0, "flops_analytic": adapt_flops},
        "per_query": {"flops_measured": per_query, "flops_analytic": per_query or 70, "wall_s": 0.1},
        "at_horizon": {"horizon": 10, "flops_measured": adapt_flops + 10 * per_query,
                       "flops_analytic": adapt_flops + 10 * (per_query or 70)},
    }
    store.write_json_atomic(folder / "record.json", record)
    store.write_jsonl_atomic(folder / "samples.jsonl",
                             [{"doc_id": i, "doc_hash": f"h{i}", "acc": o} for i, o in enumerate(outcomes)])
    return folder


def test_leaderboard_paired_test_and_pareto(tmp_path):
    from scipy.stats import binomtest

    base = [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    tuned = [1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1]  # 6 wins, 0 losses against base
    icl = [0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 0]  # 2 wins, 2 losses
    _record(tmp_path / "a", "base", base, 0, 100)
    _record(tmp_path / "b", "lora", tuned, 5000, 100, labels=8, bound=True)
    _record(tmp_path / "c", "icl", icl, 0, 900, labels=4)
    text = report.build(tmp_path / "out", runs_dir=tmp_path)
    board = __import__("pandas").read_csv(tmp_path / "out" / "leaderboard.csv").set_index("strategy")
    assert board.loc["lora", "acc"] == pytest.approx(10 / 12)
    assert board.loc["lora", "delta_vs_base"] == pytest.approx(6 / 12)
    assert board.loc["lora", "p_vs_base"] == pytest.approx(binomtest(0, 6, 0.5).pvalue)  # 0.03125
    assert board.loc["icl", "p_vs_base"] == pytest.approx(1.0)
    assert board.loc["lora", "total_flops_at_horizon"] == 5000 + 10 * 100
    assert bool(board.loc["lora", "budget_bound"]) and board.loc["icl", "labels_used"] == 4
    assert "| m | t | b | lora | " in text and "| 0.833 ± 0.112 | 12 | 1 |" in text and "p=0.0312" in text
    assert (tmp_path / "out" / "accuracy_vs_flops.png").stat().st_size > 10_000


def test_seeds_pool_into_one_test_and_settings_stay_apart(tmp_path):
    from scipy.stats import binomtest

    base = [0] * 8
    _record(tmp_path / "base", "base", base, 0, 1)
    _record(tmp_path / "s0", "icl", [1, 1, 0, 0, 0, 0, 0, 0], 0, 2, seed=0, shots=4)
    _record(tmp_path / "s1", "icl", [1, 1, 1, 0, 0, 0, 0, 0], 0, 2, seed=1, shots=4)
    _record(tmp_path / "k8", "icl", [1, 1, 1, 1, 1, 1, 1, 1], 0, 2, seed=0, shots=8)
    (tmp_path / "x.partial").mkdir()  # an unpublished cell never counts
    _record(tmp_path / "x.partial", "icl", [1] * 8, 0, 2, seed=5, shots=4)
    board, _ = report.leaderboard(report.collect(runs_dir=tmp_path))
    icl = board[board.strategy == "icl"].set_index("seeds")
    assert len(icl) == 2  # shots=4 (two seeds) and shots=8 are different rows
    four = icl.loc[2]
    assert four.acc == pytest.approx((2 / 8 + 3 / 8) / 2)
    assert four.p_vs_base == pytest.approx(binomtest(0, 5, 0.5).pvalue)  # 2 + 3 wins pooled, not the best seed's
    assert icl.loc[1].acc == 1.0


def test_uncounted_evaluation_falls_back_to_analytic_flops(tmp_path):
    _record(tmp_path / "a", "base", [1, 0, 1, 0], 0, 0)  # evaluated with engine.count_flops=false
    board, _ = report.leaderboard(report.collect(runs_dir=tmp_path))
    assert board.loc[0, "per_query_flops"] == 70 and board.loc[0, "total_flops_at_horizon"] == 700


def test_pareto_front():
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (0.5, 0.2), (2.0, 0.4)]
    assert report.pareto(points) == [0, 1, 3]


def test_report_on_empty_dir_is_a_clear_error(tmp_path):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="no finished records"):
        report.build(tmp_path / "out", runs_dir=tmp_path)
