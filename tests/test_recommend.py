"""`harness recommend` on hand-built runs with known accuracies and costs: ranking, break-even counts, constraints."""
import pytest
from test_report import FLOPS, _record

from harness.errors import HarnessError

# 40 items. Per query (measured FLOPs): base 100, icl 300, lora 110, dnd 105. Adaptation: lora 50,000; dnd 2,000
# plus its one-off phases (collect 600 + meta_train 300, shared by the 3 targets that use them: 300 each).
N = 40


def _outcomes(right: int) -> list[int]:
    return [1] * right + [0] * (N - right)


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _record(root / "m/t/base", "base", _outcomes(2), per_query=100)
    _record(root / "m/t/icl", "icl", _outcomes(28), per_query=300, extra=200.0, labels=4)
    _record(root / "m/t/lora", "lora", _outcomes(30), adapt_flops=50_000, per_query=110, extra=10.0, labels=64)
    library = {"phase": "collect", "wall_s": 60.0, "flops_measured": 600, "flops_analytic": 600, "shared_by": 3,
               "artifact": "dnd-library/x/abc"}
    generator = {"phase": "meta_train", "wall_s": 30.0, "flops_measured": 300, "flops_analytic": 300,
                 "shared_by": 3, "artifact": "dnd-generator/def"}
    for task in ("t", "u", "v"):  # three targets used the library and the generator
        _record(root / f"m/{task}/dnd", "dnd", _outcomes(29), task=task, adapt_flops=2_000, per_query=105,
                extra=5.0, budget={**FLOPS, "amount": 1e9}, one_off_costs=[library, generator])
    return root


def _table(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 7 and cells[0] not in ("rank", "---"):
            rows[cells[1].split(" ")[0]] = cells
    return rows


def test_break_even_counts_match_the_hand_computed_ones(runs):
    from harness.recommend import break_even, load_board, options

    _, found = options(load_board(runs), "t", None)
    by = {o.strategy: o for o in found}
    assert (by["dnd"].fixed_flops, by["lora"].fixed_flops, by["icl"].fixed_flops) == (2_300, 50_000, 0)
    assert by["lora"].pays_once and by["dnd"].pays_once and not by["icl"].pays_once and not by["base"].pays_once
    assert break_even(by["icl"], by["lora"]) == pytest.approx(50_000 / (300 - 110))  # 263.2 queries
    assert break_even(by["icl"], by["dnd"]) == pytest.approx(2_300 / (300 - 105))  # 11.8 queries
    assert break_even(by["base"], by["lora"]) is None  # lora also costs more per query: never cheaper
    assert by["lora"].total(1000) == 50_000 + 1000 * 110


def test_ranking_ties_within_the_ci_and_the_totals_at_the_queries(runs):
    from harness.recommend import recommend

    text = recommend(runs, "t", 1000)
    rows = _table(text)
    assert [rows[s][0] for s in ("lora", "dnd", "icl", "base")] == ["=1", "=1", "=1", "4"]
    assert rows["lora"][2].startswith("0.750 [") and rows["base"][2].startswith("0.050 [")
    assert [rows[s][5] for s in ("base", "icl", "lora", "dnd")] == ["1e+05", "3e+05", "1.6e+05", "1.07e+05"]
    assert "| icl @ b | lora @ b | 264 | lora | lora |" in text
    assert "| icl @ b | dnd @ b | 12 | dnd | dnd |" in text
    assert "| base @ b | lora @ b | never (no crossing) | — | base |" in text
    at_100 = recommend(runs, "t", 100)
    assert "| icl @ b | lora @ b | 264 | lora | icl |" in at_100  # below the break-even ICL is the cheaper
    assert "no record for lora_fewshot on this task: run `harness run model=m task=t strategy=lora_fewshot`" in text


def test_constraints_filter_labels_and_compute(runs):
    from harness.recommend import recommend

    few_labels = recommend(runs, "t", 1000, labels=10)
    assert set(_table(few_labels)) == {"base", "icl", "dnd"}
    assert "- lora @ b: needs 64 labels > 10" in few_labels
    capped = recommend(runs, "t", 1000, max_flops=200_000)
    assert set(_table(capped)) == {"base", "lora", "dnd"}
    assert "- icl @ b: 3e+05 FLOPs at 1000 queries > 2e+05" in capped
    # every hand-built cell took 1 s to adapt and 0.1 s per query; dnd adds its one-off share, (60 + 30) s / 3 targets
    seconds = recommend(runs, "t", 10, max_seconds=2.5)
    assert set(_table(seconds)) == {"base", "icl", "lora"}
    assert "- dnd @ b: 32 s at 10 queries > 2.5" in seconds


def test_a_report_folder_gives_the_same_answer_and_a_plot(runs, tmp_path):
    from harness import report
    from harness.recommend import recommend

    report.build(tmp_path / "report", runs_dir=runs)
    from_records = recommend(runs, "t", 1000)
    from_csv = recommend(tmp_path / "report", "t", 1000, plot=tmp_path / "plot.png")
    assert from_csv.split("\n\nPlot:")[0] == from_records
    assert (tmp_path / "plot.png").stat().st_size > 10_000


@pytest.mark.parametrize("call, message", [
    (dict(task="nope", queries=10), r"no record for task 'nope' here \(tasks with records: t, u, v\): run"),
    (dict(task="t", queries=10, model="other"), r"no record for model 'other' on task t \(models with records: m\)"),
    (dict(task="t", queries=-1), r"--queries must be >= 0"),
    (dict(task="t", queries=10, max_flops=1e6, max_seconds=5), r"--max-flops and --max-seconds both given"),
    (dict(task="t", queries=10, max_flops=0), r"--max-flops must be > 0"),
])
def test_bad_input_is_one_line(runs, call, message):
    from harness.recommend import recommend

    with pytest.raises(HarnessError, match=message):
        recommend(runs, **call)


def test_cli_prints_the_table_and_fails_in_one_line(runs, capsys):
    from harness.cli import main

    main(["recommend", str(runs), "--task", "t", "--queries", "1000", "--labels", "10"])
    out = capsys.readouterr().out
    assert "# t · m · 1000 queries" in out and "needs 64 labels > 10" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["recommend", str(runs), "--task", "t", "--queries", "5", "--max-flops", "1", "--max-seconds", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
