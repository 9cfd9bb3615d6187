"""Strategies on tiny-random: what they consume, how budgets bind them, what a record holds."""
import json

import pytest
import torch

from conftest import compose, needs_data

pytestmark = needs_data


@pytest.fixture(scope="module")
def arc():
    from harness.tasks import TaskHandle

    return TaskHandle.from_cfg(compose("task=arc_easy").task)


def _ctx(tiny, task, budget, strategy, tmp_path, **overrides):
    from harness.budget import Budget
    from harness.strategy import AdaptContext

    cfg = compose(f"strategy={strategy}", *[f"strategy.{k}={v}" for k, v in overrides.items()]).strategy
    return AdaptContext(model=tiny.model, tokenizer=tiny.tokenizer, task=task,
                        budget=Budget("b", *budget, "amortized", "cached"), settings=cfg, seed=3, workdir=tmp_path, device=torch.device("cpu"), progress=False)


def test_icl_demonstrations_come_from_the_pool_and_fit_the_budget(tiny, arc, tmp_path):
    from harness.strategy import get_strategy

    icl = get_strategy("icl")
    free = icl.adapt(_ctx(tiny, arc, ("steps", 1, 100), "icl", tmp_path, shots=4))
    assert free.kind == "prefix" and free.labels_used == 4 and not free.budget.bound
    assert free.prefix.count("Question:") == 4 and free.prefix.endswith("\n\n")
    eval_prompts = {arc.unlabeled_prompt(d) for d in arc.eval_docs}
    assert not any(block.split("\nAnswer:")[0] + "\nAnswer:" in eval_prompts
                   for block in free.prefix.strip().split("\n\n"))
    one_demo = free.per_query_extra_flops / 4  # roughly; the budget below fits about two
    tight = icl.adapt(_ctx(tiny, arc, ("flops", 100 * 2.2 * one_demo, 100), "icl", tmp_path, shots=4))
    assert tight.budget.bound and 1 <= tight.labels_used < 4
    assert tight.budget.spent <= tight.budget.amount
    blocks = free.prefix.split("\n\n")[:-1]  # the same seed draws the same demonstrations, in order
    assert tight.prefix == "\n\n".join(blocks[:tight.labels_used]) + "\n\n"
    labels = icl.adapt(_ctx(tiny, arc, ("examples", 2, 100), "icl", tmp_path, shots=4))
    assert labels.labels_used == 2 and labels.budget.bound


def test_few_shot_lora_sees_exactly_k_labels(tiny, arc, tmp_path):
    from harness.strategy import get_strategy

    out = get_strategy("lora").adapt(_ctx(tiny, arc, ("steps", 6, 100), "lora_fewshot", tmp_path, shots=5,
                                          batch_size=2))
    assert out.labels_used == 5 and out.details["sequences_processed"] == 12 and out.details["pool_examples"] == 5
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_an_examples_budget_counts_distinct_labels_for_every_strategy(tiny, arc, tmp_path):
    from harness.strategy import get_strategy

    out = get_strategy("lora").adapt(_ctx(tiny, arc, ("examples", 5, 100), "lora_fewshot", tmp_path, shots=16,
                                          batch_size=2))
    # 5 of the 16 drawn labels, one pass (3 steps of 2: 6 sequences, one label seen twice)
    assert out.labels_used == 5 and out.details["pool_examples"] == 5
    assert out.details["steps"] == 3 and out.details["sequences_processed"] == 6
    assert out.budget.spent == 5 and out.budget.bound
    assert "allows 5 labeled examples of the 16" in out.budget.stop_reason
    twice = get_strategy("lora").adapt(_ctx(tiny, arc, ("examples", 5, 100), "lora_fewshot", tmp_path / "e",
                                            shots=16, batch_size=2, epochs=2))
    assert twice.labels_used == 5 and twice.details["sequences_processed"] == 10 and twice.budget.spent == 5
    base = get_strategy("base").adapt(_ctx(tiny, arc, ("examples", 5, 100), "base", tmp_path))
    assert base.labels_used == 0 and base.budget.spent == 0


def test_a_record_holds_what_is_needed_to_rerun_its_cell(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "runs"))
    main(["run", "model=tiny-random", "task=piqa", "strategy=lora_fewshot", "budget=steps_50", "budget.amount=2",
          "eval.limit=5", "seed=4", "progress=false"])
    (path,) = list((tmp_path / "runs").rglob("record.json"))
    record = json.loads(path.read_text())
    assert record["config"]["seed"] == 4 and record["config"]["strategy"]["shots"] == 16
    assert record["versions"]["torch"].startswith("2.13") and record["versions"]["lm_eval"]
    pool = record["data"]["pool"]
    assert pool["carved"] and pool["carve_seed"] == 1234 and len(pool["carved_rows"]) == 400
    assert all(len(fp) == 64 for fp in pool["fingerprints"].values())
    assert record["eval"]["subset"] == "seeded" and len(record["eval"]["doc_ids"]) == 5
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"} <= set(record["metrics"])
    phases = [c["phase"] for c in record["costs"]]
    assert phases == ["train", "inference"]
    for cost in record["costs"]:
        assert {"wall_s", "flops_measured", "flops_analytic", "tokens", "peak_mem_bytes", "device"} <= set(cost)
        assert cost["flops_measured"] > 0 and cost["wall_s"] > 0
    assert record["adaptation"]["budget"] == {**record["adaptation"]["budget"], "spent": 2.0, "bound": True}
    assert record["adaptation"]["adapter_dir"] == str(path.parent / "adapter")
    assert record["per_query"]["flops_measured"] * 5 == pytest.approx(record["costs"][1]["flops_measured"])
    samples = [json.loads(x) for x in (path.parent / "samples.jsonl").read_text().splitlines()]
    assert sorted(s["doc_id"] for s in samples) == record["eval"]["doc_ids"]
