"""The shared LoRA trainer: stops at its budget, saves standard peft adapters and trajectories."""
import functools
import json
from dataclasses import replace

import pytest
import torch

from conftest import compose
from harness.budget import Budget, TrainingBudget
from harness.costs import PhaseMeter
from harness.errors import BudgetTooSmall, HarnessError
from harness.flops import ModelShape
from harness.trainer import LoraSettings, encode_example, train_lora

EXAMPLES = [(f"Question: what is {i} plus {i}?\nAnswer:", f" {2 * i}") for i in range(12)]


@functools.lru_cache(maxsize=1)
def _lora_yaml() -> LoraSettings:
    from baselines.lora import LoraTuningSettings
    from harness.strategy_settings import settings_from

    return settings_from(LoraTuningSettings, compose("strategy=lora").strategy).trainer()


def lora_yaml(**changes) -> LoraSettings:
    """The trainer's settings as configs/strategy/lora.yaml holds them (the only place they are written)."""
    return replace(_lora_yaml(), **changes)


def _train(model, tmp_path, kind, amount, **settings):
    budget = TrainingBudget(Budget("test", kind, amount, 10, "amortized"))
    with PhaseMeter("train", "cpu") as meter:
        result = train_lora(model.model, model.tokenizer, EXAMPLES, budget,
                            lora_yaml(batch_size=4, **settings), tmp_path, meter, seed=0, progress=False)
    return result, budget.use, meter.cost


def _step_flops(model, batch=4):
    enc = [encode_example(model.tokenizer, p, c, 256) for p, c in EXAMPLES]
    width = max(len(ids) for ids, _ in enc)  # the widest batch: an upper bound on one step
    base = ModelShape.of(model.model)
    rank = lora_yaml().rank  # A is r×in, B is out×r on every targeted Linear
    lora = rank * sum(m.in_features + m.out_features for n, m in model.model.named_modules()
                      if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in lora_yaml().target_modules)
    return ModelShape(base.matmul_params, base.n_layers, base.n_heads, base.head_dim, lora).lora_train_step(
        batch, width)


def test_flops_budget_is_spent_but_never_exceeded(fresh_tiny, tmp_path):
    step = _step_flops(fresh_tiny)
    amount = 7.5 * step
    result, use, cost = _train(fresh_tiny, tmp_path, "flops", amount)
    assert use.bound and use.stop_reason == "budget spent"
    assert use.spent <= amount
    assert use.spent > amount - 2 * step  # it did not stop early either
    assert 5 <= result.steps <= 8
    assert cost.flops_measured == use.spent
    assert cost.flops_measured == pytest.approx(cost.flops_analytic, rel=0.15)


def test_steps_and_examples_budgets(fresh_tiny, tmp_path):
    result, use, _ = _train(fresh_tiny, tmp_path / "a", "steps", 3)
    assert result.steps == 3 and use.spent == 3 and use.bound
    # An examples budget counts labels, which the strategy picks before training: it stops no step itself.
    result, use, _ = _train(fresh_tiny, tmp_path / "b", "examples", 10, max_steps=5)
    assert result.steps == 5 and result.sequences_processed == 20 and not use.bound
    with pytest.raises(HarnessError, match="counts labeled examples"):
        _train(fresh_tiny, tmp_path / "c", "examples", 10)


def test_seconds_budget_stops_before_the_deadline(fresh_tiny, tmp_path):
    result, use, cost = _train(fresh_tiny, tmp_path, "seconds", 1.0)
    assert use.bound and result.steps >= 2
    # the next step, predicted from the average so far, would not have ended in time
    assert use.spent + use.spent / result.steps > 1.0
    assert use.spent <= 1.0 or "overspent" in use.stop_reason


def test_strategy_max_steps_stops_before_the_budget(fresh_tiny, tmp_path):
    result, use, _ = _train(fresh_tiny, tmp_path, "steps", 100, max_steps=2)
    assert result.steps == 2 and not use.bound and "max_steps" in use.stop_reason


def test_budget_smaller_than_one_step_fails_before_training(fresh_tiny, tmp_path):
    with pytest.raises(BudgetTooSmall, match="smaller than one training step"):
        _train(fresh_tiny, tmp_path, "flops", 1e6)
    assert not (tmp_path / "adapter").exists()
    with pytest.raises(BudgetTooSmall, match="after reserving"):  # what serving needs is not for training
        budget = TrainingBudget(Budget("test", "flops", 2 * _step_flops(fresh_tiny), 10, "amortized"),
                                reserved=1.5 * _step_flops(fresh_tiny))
        with PhaseMeter("train", "cpu") as meter:
            train_lora(fresh_tiny.model, fresh_tiny.tokenizer, EXAMPLES, budget, lora_yaml(batch_size=4),
                       tmp_path, meter, progress=False)


def test_adapter_reloads_with_peft_and_trajectory_is_saved(fresh_tiny, tmp_path):
    from peft import PeftModel

    result, _, _ = _train(fresh_tiny, tmp_path, "steps", 5, checkpoint_every=2, checkpoint_start=1, lr=1e-2)
    assert [p.split("/")[-1] for p in result.trajectory] == ["step_000001", "step_000003", "step_000005"]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert set(config["target_modules"]) == set(lora_yaml().target_modules)
    # The base model came back without LoRA layers ...
    assert not any("lora_" in n for n, _ in fresh_tiny.model.named_parameters())
    x = torch.randint(0, 1000, (1, 16))
    with torch.no_grad():
        base_logits = fresh_tiny.model(x).logits
        adapted = PeftModel.from_pretrained(fresh_tiny.model, result.adapter_dir)
        tuned_logits = adapted(x).logits
    # ... and the reloaded adapter changes its outputs (B is no longer zero after 5 steps at lr 1e-2).
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-6)
    adapted.unload()


def test_loss_goes_down_on_a_memorizable_set(fresh_tiny, tmp_path):
    result, _, _ = _train(fresh_tiny, tmp_path, "steps", 40, lr=3e-3, warmup_frac=0.0)
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < first - 0.5


def test_completion_tokens_match_lm_eval_split(tiny):
    ids, start = encode_example(tiny.tokenizer, "Question: 2+2?\nAnswer:", " 4", 256)
    assert tiny.tokenizer.decode(ids[start:]) == " 4"
    ids, start = encode_example(tiny.tokenizer, "word " * 300 + "?", " end", 64)
    assert len(ids) == 64 and tiny.tokenizer.decode(ids[start:]) == " end"
