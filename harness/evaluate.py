"""Evaluation through lm-eval's own evaluator, on the (possibly adapted) model, with costs metered.

The evaluator only sees an adaptation's kind: an adapter directory (loaded with peft, unmerged,
as `lm_eval --model_args peft=...` does), an in-context prefix (prepended to every prompt through
the task's description), or nothing. It never knows which strategy produced it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.costs import PhaseCost, PhaseMeter
from harness.errors import HarnessError
from harness.flops import ModelShape
from harness.tasks import TaskHandle, quiet_lm_eval


@dataclass
class EvalResult:
    metrics: dict
    samples: list[dict]
    cost: PhaseCost
    n: int
    per_query: dict = field(default_factory=dict)
    lm_eval_config: dict = field(default_factory=dict)


def metered_lm_class():
    from lm_eval.models.huggingface import HFLM

    class MeteredHFLM(HFLM):
        """lm-eval's HF model, with every forward pass FLOP-counted and its tokens tallied."""

        def __init__(self, *args, meter: PhaseMeter, shape: ModelShape, count_flops: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self._meter, self._shape, self._count = meter, shape, count_flops

        def _model_call(self, inps, attn_mask=None, labels=None):
            batch, seq = inps.shape
            self._meter.add(flops_analytic=self._shape.forward(batch, seq), tokens=batch * seq)
            if not self._count:
                return super()._model_call(inps, attn_mask, labels)
            key = ("forward", tuple(inps.shape), attn_mask is not None, labels is not None)
            with self._meter.count(key):
                return super()._model_call(inps, attn_mask, labels)

    return MeteredHFLM


def _escape_template(text: str) -> str:
    # lm-eval renders `description` as a Jinja template against each doc: keep the prefix literal.
    return "{% raw %}" + text + "{% endraw %}" if text else text


def attach_adapter(model, adapter_dir: str | Path):
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise HarnessError(f"adapter directory {path} has no adapter_config.json: point to a peft adapter folder")
    return PeftModel.from_pretrained(model, str(path), is_trainable=False).eval()


def evaluate_adaptation(model, tokenizer, task: TaskHandle, adaptation, indices: list[int], batch_size: int,
                        device: torch.device, count_flops: bool = True) -> EvalResult:
    import lm_eval

    quiet_lm_eval()
    lm_model = model
    if adaptation.kind == "adapter":
        lm_model = attach_adapter(model, adaptation.adapter_dir)
    task.task.set_config(key="description", value=_escape_template(adaptation.prefix or ""))
    shape = ModelShape.of(lm_model)
    meter = PhaseMeter("inference", device)
    lm = metered_lm_class()(pretrained=lm_model, tokenizer=tokenizer, batch_size=batch_size, meter=meter,
                            shape=shape, count_flops=count_flops)
    try:
        with meter:
            out = lm_eval.evaluate(lm=lm, task_dict={task.lm_eval_name: task.task},
                                   samples={task.lm_eval_name: list(indices)}, log_samples=True,
                                   bootstrap_iters=1000, verbosity="ERROR")
    finally:
        task.task.set_config(key="description", value="")
        if adaptation.kind == "adapter":
            lm_model.unload()
    res = out["results"][task.lm_eval_name]
    metrics = {}
    for key, value in res.items():
        if "," not in key:
            continue
        name, _filter = key.split(",", 1)
        metrics[name] = value
    samples = out["samples"][task.lm_eval_name]
    for name in [m for m in metrics if m.endswith("_stderr")]:  # lm-eval writes "N/A" when n < 2
        if not isinstance(metrics[name], (int, float)):
            metrics[name] = float("nan")
    n = len(samples)
    cost = meter.cost
    per_query = {"flops_measured": cost.flops_measured / max(n, 1), "flops_analytic": cost.flops_analytic / max(n, 1),
                 "tokens": cost.tokens / max(n, 1), "wall_s": cost.wall_s / max(n, 1)}
    cost.details.update(queries=n, batch_size=batch_size, flops_counted=count_flops)
    return EvalResult(metrics, samples, cost, n, per_query,
                      {"n-samples": out.get("n-samples", {}).get(task.lm_eval_name),
                       "task_config": _jsonable(out.get("configs", {}).get(task.lm_eval_name, {}))})


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj, default=str))
