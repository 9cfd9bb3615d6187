"""Integration: the real SmolLM2-135M-Instruct on a few real items from the offline mirror."""
import pytest
import torch

from conftest import compose, needs_data

pytestmark = [pytest.mark.integration, needs_data]


@pytest.fixture(scope="module")
def smollm2():
    from harness.models import load_model

    return load_model(compose("model=smollm2-135m").model, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def arc_easy():
    from harness.tasks import TaskHandle

    return TaskHandle.from_cfg(compose("task=arc_easy").task)


def test_base_accuracy_on_100_arc_easy_items_is_above_chance(smollm2, arc_easy):
    from harness.evaluate import evaluate_adaptation
    from harness.strategy import Adaptation

    indices = arc_easy.eval_indices(100, 1234)
    result = evaluate_adaptation(smollm2.model, smollm2.tokenizer, arc_easy, Adaptation(kind="none"), indices,
                                 16, torch.device("cpu"))
    assert result.n == 100
    assert result.metrics["acc"] > 0.35  # chance is 0.25
    assert 0 < result.metrics["acc_stderr"] < 0.06
    # Costs: every forward pass was counted, and the two FLOP figures agree.
    assert result.cost.flops_measured == pytest.approx(result.cost.flops_analytic, rel=0.15)
    assert result.cost.tokens > 100 * 4 * 10


def test_lora_adapter_saved_reloaded_gives_the_same_scores(smollm2, arc_easy, tmp_path):
    from harness.budget import Budget
    from harness.evaluate import evaluate_adaptation
    from harness.strategy import AdaptContext, Adaptation, get_strategy

    cfg = compose("strategy=lora_fewshot", "strategy.lr=1e-3")
    ctx = AdaptContext(model=smollm2.model, tokenizer=smollm2.tokenizer, task=arc_easy,
                       budget=Budget("steps_4", "steps", 4, 100, "amortized", "cached"), settings=cfg.strategy, seed=0,
                       workdir=tmp_path,
                       device=torch.device("cpu"), progress=False)
    adaptation = get_strategy("lora").adapt(ctx)
    assert adaptation.kind == "adapter" and adaptation.labels_used == 16
    assert adaptation.budget.spent == 4 and adaptation.costs[0].phase == "train"
    indices = arc_easy.eval_indices(24, 1234)

    def scores(adapt):
        res = evaluate_adaptation(smollm2.model, smollm2.tokenizer, arc_easy, adapt, indices, 8,
                                  torch.device("cpu"))
        return res.metrics["acc"], [float(r[0]) for s in res.samples for r in s["filtered_resps"]]

    acc_a, ll_a = scores(adaptation)
    # Reload the saved folder as a user would (strategy=adapter), in a fresh Adaptation.
    acc_b, ll_b = scores(Adaptation(kind="adapter", adapter_dir=adaptation.adapter_dir))
    assert acc_a == acc_b
    assert ll_a == pytest.approx(ll_b, abs=1e-4)
    acc_base, ll_base = scores(Adaptation(kind="none"))
    assert ll_base != pytest.approx(ll_a, abs=1e-4)  # the adapter really changed the model


def test_plain_lm_eval_cli_runs_our_task_yaml(smollm2, tmp_path):
    """`lm_eval --include_path tasks/commonsense` scores our tasks with lm-eval's own HF model."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import ROOT

    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args",
           f"pretrained={smollm2.info['cache']},dtype=float32", "--device", "cpu", "--include_path",
           str(ROOT / "tasks" / "commonsense"), "--tasks", "harness_boolq", "--limit", "8", "--batch_size", "8",
           "--output_path", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result_files = list(tmp_path.rglob("results_*.json"))
    assert len(result_files) == 1
    results = json.loads(result_files[0].read_text())["results"]["harness_boolq"]
    assert 0.0 <= results["acc,none"] <= 1.0 and results["acc_stderr,none"] > 0


def test_dnd_on_smollm2_generates_an_adapter_of_the_real_layout(tmp_path):
    """SmolLM2 r8 on q_proj and v_proj (the smollm2-small preset): 300 parameter tokens of 10 × 194; the generated
    adapter is scored on real items."""
    import json

    from harness.runner import run_cell

    cfg = compose("model=smollm2-135m", "task=arc_easy", "strategy=dnd_default", "eval.limit=5", "progress=false",
                  "strategy.collect.steps=3", "strategy.collect.checkpoints=2", "strategy.meta_train.steps=4",
                  "strategy.bank=16", "strategy.collect.check_items=4", f"runs_dir={tmp_path}")
    record = json.loads((run_cell(cfg) / "record.json").read_text())
    details = record["adaptation"]["details"]
    assert details["tokens"]["n_tokens"] == 300 and details["tokens"]["token_shape"] == [10, 194]
    assert details["preset"] == "smollm2-small" and details["library"] == ["arc_challenge", "openbookqa"]
    assert all(c["own_task"]["n"] == 4 for c in details["library_checks"].values())
    assert record["metrics"]["n"] == 5
    shared = {c["phase"]: c["shared_by"] for c in record["costs"] if c["shared_by"]}
    assert shared == {"collect": 2, "meta_train": 2}  # the default's two targets share the library
    assert record["adaptation_cost"]["one_off_amortized"]["flops_measured"] == pytest.approx(
        record["adaptation_cost"]["one_off"]["flops_measured"] / 2)


@pytest.mark.parametrize("task, metric", [("gsm8k", "exact_match"), ("humaneval", "pass@1")])
def test_base_generates_and_is_scored_end_to_end(task, metric, tmp_path):
    """Base SmolLM2 on three real items: chat template, generation, extraction or sandboxed tests, costs."""
    from harness import store
    from harness.runner import run_cell

    cfg = compose(f"task={task}", "strategy=base", "eval.limit=3", f"runs_dir={tmp_path}", "progress=false",
                  "+task.sampling.max_gen_toks=160")
    folder = run_cell(cfg)
    record = store.read_record(folder)
    samples = store.read_samples(folder)
    assert record["metrics"]["n"] == 3 and 0.0 <= record["metrics"][metric] <= 1.0
    assert f"{metric}_stderr" in record["metrics"]
    inference = record["costs"][-1]
    assert inference["details"]["chat_template"] is True  # an instruct model on a generation task
    assert 0 < inference["details"]["generated_tokens"] <= 3 * 160
    assert inference["flops_measured"] == pytest.approx(inference["flops_analytic"], rel=0.05)
    assert record["per_query"]["generated_tokens"] > 0
    for sample in samples:
        prompt = sample["arguments"][0][0]
        assert "<|im_start|>assistant" in prompt
        if task == "humaneval":
            grade = sample["grades"][0]
            assert grade["status"] in ("ok", "error", "timeout", "cpu_limit", "memory_limit", "output_limit")
            assert (grade["status"] == "ok") == grade["passed"] == bool(sample["pass@1"])
