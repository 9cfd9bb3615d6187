"""GPU path: bf16 training and evaluation with synchronized timing and CUDA peak memory (skipped on CPU)."""
import pytest
import torch

from conftest import compose, needs_data

pytestmark = [pytest.mark.gpu, needs_data]


def test_train_and_evaluate_on_cuda_in_bf16(tmp_path):
    from harness.budget import Budget
    from harness.evaluate import evaluate_adaptation
    from harness.models import load_model
    from harness.strategy import AdaptContext, get_strategy
    from harness.tasks import TaskHandle

    device = torch.device("cuda")
    cfg = compose("model=tiny-random", "task=arc_easy", "strategy=lora_fewshot")
    loaded = load_model(cfg.model, device, torch.bfloat16)
    task = TaskHandle.from_cfg(cfg.task)
    ctx = AdaptContext(model=loaded.model, tokenizer=loaded.tokenizer, task=task,
                       budget=Budget("s", "steps", 3, 10, "amortized", "cached"),
                       settings=cfg.strategy, seed=0, workdir=tmp_path, device=device, progress=False)
    adaptation = get_strategy("lora").adapt(ctx)
    train = adaptation.costs[0]
    assert train.peak_mem_kind == "cuda_max_allocated" and train.peak_mem_bytes > 0
    assert "cpu" not in train.device.lower() and train.wall_s > 0
    assert train.flops_measured == pytest.approx(train.flops_analytic, rel=0.15)
    result = evaluate_adaptation(loaded.model, loaded.tokenizer, task, adaptation, task.eval_indices(8, 1), 8, device)
    assert result.n == 8 and result.cost.flops_measured == pytest.approx(result.cost.flops_analytic, rel=0.15)
