"""The strategy interface and its registry. The core knows no strategy by name.

A strategy turns (model, task pool, budget) into an Adaptation: a peft adapter directory, an
in-context prefix, or nothing, plus the cost of every phase that produced it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from harness.budget import Budget, BudgetUse
from harness.costs import PhaseCost
from harness.errors import HarnessError
from harness.pricing import QueryPricer
from harness.tasks import TaskHandle


@dataclass
class AdaptContext:
    model: torch.nn.Module
    tokenizer: object
    task: TaskHandle
    budget: Budget
    settings: object  # the strategy's config node
    seed: int
    workdir: Path  # the cell's folder: adapters and logs go here
    device: torch.device
    progress: bool = True
    model_name: str = ""
    model_cfg: dict = field(default_factory=dict)  # resolved model config (keys of cached shared artifacts)
    shared_dir: Path | None = None  # artifacts shared by cells of one model (e.g. DnD's library, generators)
    pricing: QueryPricer | None = None  # what a query costs, with and without an adaptation (budgets × horizon)

    def __post_init__(self) -> None:
        if self.pricing is None:  # the runner passes one that knows the base model's output length
            from harness.flops import ModelShape

            self.pricing = QueryPricer(self.task, self.tokenizer, ModelShape.of(self.model))


@dataclass
class Adaptation:
    kind: str  # "none" | "prefix" | "adapter"
    labels_used: int = 0
    prefix: str | None = None
    adapter_dir: str | None = None
    costs: list[PhaseCost] = field(default_factory=list)
    budget: BudgetUse | None = None
    details: dict = field(default_factory=dict)
    # Extra cost on every query, relative to the base model (ICL's demonstrations, an unmerged adapter),
    # analytic, as priced before evaluation (ctx.pricing); the record compares it with evaluation's.
    per_query_extra_flops: float = 0.0
    lora_params: int = 0  # weights of the unmerged adapter served with every query (priced per token)
    # What this adaptation is when the seed changes more than chance (dnd_member: seed k is library LoRA k):
    # cells whose `variant` differs are separate rows of the report, never seeds of one row.
    variant: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["costs"] = [c.to_dict() for c in self.costs]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Adaptation":
        data = dict(data)
        data["costs"] = [PhaseCost.from_dict(c) for c in data.get("costs", [])]
        if data.get("budget"):
            data["budget"] = BudgetUse(**data["budget"])
        return cls(**data)


class Strategy(Protocol):
    def validate(self, settings) -> None:
        """Check the settings before any model is loaded or compute spent (raise HarnessError)."""

    # Optional: `validate_cell(cfg)` checks what needs the whole cell (e.g. the target task);
    # `reads_tasks(cfg)` names other tasks (configs/task/) whose data the adaptation learns from: their
    # data fingerprints then key the cell (DnD's library).

    def adapt(self, ctx: AdaptContext) -> Adaptation: ...


STRATEGIES: dict[str, Callable[[], Strategy]] = {}


def register_strategy(name: str):
    def wrap(cls):
        STRATEGIES[name] = cls
        return cls

    return wrap


def get_strategy(name: str) -> Strategy:
    import baselines  # noqa: F401  (registers the built-in strategies)

    if name not in STRATEGIES:
        raise HarnessError(f"unknown strategy implementation {name!r}; registered: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]()
