"""Bad input: a one-line error naming the problem and the fix, exit code 2, and no record written."""
import subprocess
import sys

import pytest

from conftest import ROOT, needs_data
from harness.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def records(root):
    return list(root.rglob("record.json")) if root.exists() else []


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.mark.parametrize("override,expected", [
    ("model=gpt9", "unknown model 'gpt9'"),
    ("task=arc_hard", "unknown task 'arc_hard'"),
    ("strategy=magic", "unknown strategy 'magic'"),
    ("budget=flops_1e99", "unknown budget 'flops_1e99'"),
    ("task=[arc", "malformed override"),
    ("nonsense", "malformed override 'nonsense'"),
    ("no_such_key=3", "Could not override 'no_such_key'"),
])
def test_bad_names_and_overrides(capsys, runs, override, expected):
    code, _, err = run_cli(capsys, "run", override)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not records(runs)


def test_unknown_value_inside_a_sweep(capsys, runs):
    code, _, err = run_cli(capsys, "run", "-m", "strategy=base,icll", "task=arc_easy")
    assert code == 2 and "unknown strategy 'icll'" in err and "icl, icl_aug_ft" in err


def test_adapter_path_that_does_not_exist(capsys, runs, tmp_path):
    code, _, err = run_cli(capsys, "run", "model=tiny-random", "strategy=adapter",
                           f"strategy.path={tmp_path / 'nope'}")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err and "strategy.path" in err
    assert not records(runs)


@needs_data
def test_budget_smaller_than_one_training_step(capsys, runs):
    code, _, err = run_cli(capsys, "run", "model=tiny-random", "task=arc_easy", "strategy=lora",
                           "budget=flops_1e13", "budget.amount=1000", "budget.horizon=0", "eval.limit=5",
                           "progress=false")
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]  # (a first run also shows GGUF progress)
    assert "Traceback" not in err
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ")
    assert "smaller than one training step" in errors[0] and "budget.amount" in errors[0]
    assert not records(runs) and not list(runs.rglob("*.partial"))  # refused before training: nothing left
    # With a horizon, serving the unmerged adapter is priced first: here it alone exceeds the budget.
    code, _, err = run_cli(capsys, "run", "model=tiny-random", "task=arc_easy", "strategy=lora",
                           "budget=flops_1e13", "budget.amount=1000", "eval.limit=5", "progress=false")
    assert code == 2 and "leaves nothing to train with" in err and not records(runs)
    assert not list(runs.rglob("*.partial")) and not list(runs.rglob("arc_easy"))


@pytest.mark.parametrize("override,expected", [
    ("eval.limit=abc", "eval.limit must be an integer"),
    ("strategy=icl strategy.shots=abc", "strategy.shots must be an integer"),
    ("strategy=lora strategy.lr=abc", "strategy.lr must be a number"),
    ("engine.device=tpu", "unknown engine.device 'tpu'"),
    ("engine.batch_size=0", "engine.batch_size must be >= 1"),
    ("strategy=base,icl", "add -m to sweep"),
    ("budget.one_off=sometimes", "one_off must be one of amortized, whole, excluded (got 'sometimes')"),
    ("budget.icl_pricing=free", "icl_pricing must be one of cached, recompute (got 'free')"),
    ("engine.scorer=fast", "engine.scorer must be one of shared_context, lm_eval (got 'fast')"),
    ("engine.memory_gib=-1", "engine.memory_gib must be a positive number of GiB or auto"),
    ("task=livecodebench task.grading=strict", "unknown grading mode 'strict'"),
])
def test_bad_values_are_one_line_errors(capsys, runs, override, expected):
    code, _, err = run_cli(capsys, "run", "model=tiny-random", "task=arc_easy", *override.split())
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]  # (a first run also shows GGUF progress)
    assert "Traceback" not in err
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ") and expected in errors[0]
    assert not records(runs)


@needs_data
def test_a_failing_cell_does_not_stop_the_sweep(capsys, runs):
    code, out, err = run_cli(capsys, "run", "-m", "model=tiny-random", "task=arc_easy", "strategy=lora,base",
                             "budget=flops_1e13", "budget.amount=1000", "budget.horizon=0", "eval.limit=4",
                             "progress=false")
    assert code == 2
    assert "smaller than one training step" in err and "1 cell(s) failed" in err
    assert len(records(runs)) == 1 and "| base |" in out  # base ran, and its report was printed


def test_missing_data_while_offline(capsys, runs, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "empty"))
    code, _, err = run_cli(capsys, "run", "model=tiny-random", "task=piqa", "eval.limit=5")
    error_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(error_lines) == 1
    assert "ybisk/piqa/default/validation" in error_lines[0] and "HARNESS_DATA_DIR" in error_lines[0]
    assert not records(runs)


def test_hub_model_offline_is_a_clear_error(capsys, runs):
    code, _, err = run_cli(capsys, "run", "model=qwen2.5-0.5b", "eval.limit=5")
    error_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(error_lines) == 1
    assert "Qwen/Qwen2.5-0.5B-Instruct" in error_lines[0] and "model=smollm2-135m" in error_lines[0]


def test_list_shows_every_group(capsys):
    for what, name in [("tasks", "winogrande"), ("strategies", "lora_fewshot"), ("models", "tiny-random"),
                       ("budgets", "flops_1e15"), ("experiments", "default")]:
        code, out, _ = run_cli(capsys, "list", what)
        assert code == 0 and name in out
    code, _, err = run_cli(capsys, "list", "colours")
    assert code == 2 and "tasks, strategies" in err


def test_real_process_exit_code_and_single_line():
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "task=nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown task 'nope'" in proc.stderr


def test_hydra_flags_with_values_pass_through(capsys, runs):
    code, out, err = run_cli(capsys, "run", "--cfg", "job", "task=boolq", "strategy=icl")
    assert code == 0 and "lm_eval_task: harness_boolq" in out and "shots: 4" in out
    assert not records(runs)
