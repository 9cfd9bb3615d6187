"""The shared LoRA trainer: stops at its budget, saves standard peft adapters and trajectories."""
import functools
import math
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
    budget = TrainingBudget(Budget("test", kind, amount, 10, "amortized", "cached"))
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
        budget = TrainingBudget(Budget("test", "flops", 2 * _step_flops(fresh_tiny), 10, "amortized", "cached"),
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


def _padding(batches) -> float:
    """Share of a batch's positions that are padding, over all batches (each row is padded to its batch's longest)."""
    positions = sum(len(b) * max(len(ids) for ids, _ in b) for b in batches)
    return 1 - sum(len(ids) for b in batches for ids, _ in b) / positions


def test_batches_are_length_grouped_random_and_cover_every_example_once_per_epoch():
    import random

    from harness.trainer import _Batches

    lengths = random.Random(7).choices(range(5, 301), k=200)
    encoded = [([i] + [0] * (n - 1), 0) for i, n in enumerate(lengths)]  # the first id names the example
    draw = _Batches(encoded, 4, seed=0)
    epoch = [draw.next() for _ in range(50)]
    assert sorted(ids[0] for b in epoch for ids, _ in b) == list(range(200))  # one epoch: each example once
    shuffled = [encoded[j: j + 4] for j in range(0, 200, 4)]  # what unsorted batches pad: ~40 % here
    assert _padding(shuffled) > 0.3 and _padding(epoch) < 0.05
    widths = [max(len(ids) for ids, _ in b) for b in epoch]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)  # batch order stays shuffled
    again = _Batches(encoded, 4, seed=0)
    assert [again.next() for _ in range(120)] == epoch + [draw.next() for _ in range(70)]  # deterministic per seed
    other = _Batches(encoded, 4, seed=1)
    assert [other.next() for _ in range(50)] != epoch


def test_predicted_flops_follow_the_grouped_batches_on_varied_lengths(fresh_tiny, tmp_path):
    from harness.trainer import predict_train_flops

    examples = [(f"Question: {'why ' * (i * 7 % 23)}is {i} odd?\nAnswer:", " no" if i % 2 else " yes")
                for i in range(40)]
    settings = lora_yaml(batch_size=4)
    budget = TrainingBudget(Budget("test", "steps", 12, 0, "excluded", "cached"))
    with PhaseMeter("train", "cpu") as meter:
        result = train_lora(fresh_tiny.model, fresh_tiny.tokenizer, examples, budget, settings, tmp_path, meter,
                            seed=3, progress=False)
    predicted = predict_train_flops(fresh_tiny.model, fresh_tiny.tokenizer, examples, settings, 12, seed=3)
    assert result.steps == 12
    assert predicted == meter.cost.flops_analytic  # the very batches the trainer drew
    assert predicted == pytest.approx(meter.cost.flops_measured, rel=0.02)  # against FlopCounterMode
    # length grouping: the positions trained on are mostly real tokens (random batches of these pad ~22 %)
    assert result.tokens / meter.cost.tokens > 0.9


def test_phase_wall_clock_is_the_training_loop_set_up_and_saving_are_their_own(fresh_tiny, tmp_path):
    import time

    outside = time.perf_counter()
    result, _, cost = _train(fresh_tiny, tmp_path, "steps", 4, checkpoint_every=1, checkpoint_start=1)
    outside = time.perf_counter() - outside
    details = cost.details
    assert len(result.trajectory) == 4 and details["adapter_save_s"] > 0 and details["adapter_setup_s"] > 0
    assert cost.wall_s == pytest.approx(outside - details["adapter_setup_s"] - details["adapter_save_s"], abs=0.1)
    assert details["train_loop_s"] <= cost.wall_s


@pytest.mark.parametrize("padded", [False, True])
def test_step_flops_derived_by_the_linear_fit_equal_the_counters_own(fresh_tiny, padded):
    """A LoRA step's FlopCounterMode total is exactly a·(rows·W) + b·(rows·W²), the features the trainer gives
    `count_linear`: once learned, a derived step adds what the counter itself would have counted."""
    from peft import LoraConfig, get_peft_model

    from harness.flops import FlopTally, LinearCounts, flop_counter

    model = get_peft_model(fresh_tiny.model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                                        target_modules=list(lora_yaml().target_modules)))
    model.train()

    def step(rows: int, width: int) -> None:
        x = torch.randint(0, 1000, (rows, width))
        mask = torch.ones_like(x)
        mask[0, width // 2:] = 0 if padded else 1
        model(input_ids=x, attention_mask=mask, labels=x).loss.backward()

    def live(rows: int, width: int) -> int:
        with flop_counter() as counter:
            step(rows, width)
        return counter.get_total_flops()

    try:
        tally, kind = FlopTally(), ("lora_step", padded)
        learned = (20, 33, 47, 61, 75, 89)[: 2 + LinearCounts.CONFIRM]  # two fix a and b, the rest confirm them
        for width in learned:
            with tally.count_linear(kind, (3 * width, 3 * width * width)):
                step(3, width)
        assert (tally.counted, tally.derived) == (len(learned), 0)
        for rows, width in ((3, 90), (3, 128), (5, 70)):
            before = tally.total
            with tally.count_linear(kind, (rows * width, rows * width * width)):
                step(rows, width)
            assert tally.total - before == live(rows, width)
        assert (tally.counted, tally.derived) == (len(learned), 3)
    finally:
        model.unload()


def test_a_constant_schedule_keeps_the_saved_trajectory_moving(fresh_tiny, tmp_path):
    """DnD's library trajectories: under the cosine the last saved steps barely move (the rate ends near 0); under
    `schedule: constant` the last step moves as much as the first saved one. Step sizes measured on the saved
    adapters' weights, against the rates the schedule gives by hand (cosine at steps 10 and 12 of 12: 0.5(1 +
    cos(pi x 9.64/11.64)) = 0.072 and 0)."""
    from safetensors.torch import load_file

    from harness.trainer import _lr_factor

    assert _lr_factor(11 / 12, 0.03, "constant") == 1.0 and _lr_factor(0.01, 0.03, "constant") == pytest.approx(1 / 3)
    assert _lr_factor(11 / 12, 0.03, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * (11 / 12 - 0.03) / 0.97)))

    def moves(schedule):
        result, _, _ = _train(fresh_tiny, tmp_path / schedule, "steps", 12, checkpoint_every=1, checkpoint_start=8,
                              lr=3e-3, schedule=schedule)
        states = [load_file(f"{p}/adapter_model.safetensors") for p in result.trajectory]
        return [sum((b[k] - a[k]).norm() ** 2 for k in a) ** 0.5 for a, b in zip(states, states[1:])]

    cosine, constant = moves("cosine"), moves("constant")
    assert len(cosine) == len(constant) == 4  # steps 8..12 saved
    assert cosine[-1] < 0.2 * cosine[0]
    assert constant[-1] > 0.5 * constant[0] and constant[-1] > 5 * cosine[-1]


def test_an_unknown_schedule_is_a_one_line_error():
    from baselines.lora import LoraTuningSettings
    from harness.strategy_settings import settings_from

    with pytest.raises(HarnessError, match=r"^strategy\.schedule must be one of cosine, constant \(got 'linear'\)$"):
        settings_from(LoraTuningSettings, compose("strategy=lora", "strategy.schedule=linear").strategy)
