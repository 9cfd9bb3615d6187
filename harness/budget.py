"""Budgets: what is matched between strategies, and the meter that stops work when it is spent.

A budget pays for everything a strategy adds on top of the base model over the query horizon:
its one-off adaptation work (training, generation, ...) plus, for strategies that lengthen every
query (ICL demonstrations), `horizon` times the extra per-query cost.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from harness.errors import BudgetTooSmall, HarnessError

KINDS = ("flops", "seconds", "examples", "steps")


@dataclass(frozen=True)
class Budget:
    name: str
    kind: str
    amount: float
    horizon: int  # queries the adapted model is expected to answer

    @classmethod
    def from_cfg(cls, cfg) -> "Budget":
        kind = str(cfg.kind)
        if kind not in KINDS:
            raise HarnessError(f"budget {cfg.name}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        try:
            amount = float(cfg.amount)
            horizon = int(cfg.horizon)
        except (TypeError, ValueError):
            raise HarnessError(f"budget {cfg.name}: amount and horizon must be numbers") from None
        if not amount > 0 or not math.isfinite(amount) or horizon < 0:
            raise HarnessError(f"budget {cfg.name}: amount must be > 0 and horizon >= 0 (got {amount}, {horizon})")
        return cls(str(cfg.name), kind, amount, horizon)


@dataclass
class BudgetUse:
    """What a strategy spent against its budget; stored in the record."""

    name: str
    kind: str
    amount: float
    horizon: int
    spent: float = 0.0
    bound: bool = False  # True when the budget, not the strategy's own limit, stopped the work
    stop_reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingBudget:
    """Decides, step by step, whether another training step fits the budget.

    FLOPs are charged as measured; the next step is predicted from its analytic cost scaled by the
    measured/analytic ratio seen so far. Should a step still cost more than predicted, the overspend
    is written into the stop reason (seconds budgets always end after the deadline, by under a step).
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.use = BudgetUse(budget.name, budget.kind, budget.amount, budget.horizon)
        self._ratio = 1.0
        self._measured = 0
        self._analytic = 0

    def check_first_step(self, analytic_step_flops: int, step_examples: int) -> None:
        b = self.budget
        if b.kind == "flops" and analytic_step_flops > b.amount:
            raise BudgetTooSmall(
                f"budget {b.name} ({b.amount:.3g} FLOPs) is smaller than one training step "
                f"(~{analytic_step_flops:.3g} FLOPs): raise budget.amount or lower strategy.batch_size")
        if b.kind == "examples" and step_examples > b.amount:
            raise BudgetTooSmall(
                f"budget {b.name} ({b.amount:g} examples) is smaller than one training step "
                f"({step_examples} examples): raise budget.amount or lower strategy.batch_size")
        if b.kind == "steps" and b.amount < 1:
            raise BudgetTooSmall(f"budget {b.name} allows no training step: set budget.amount >= 1")

    def fits(self, analytic_step_flops: int, step_examples: int, elapsed_s: float, steps_done: int) -> bool:
        b = self.budget
        if b.kind == "flops":
            return self.use.spent + analytic_step_flops * self._ratio <= b.amount
        if b.kind == "examples":
            return self.use.spent + step_examples <= b.amount
        if b.kind == "steps":
            return steps_done + 1 <= b.amount
        return elapsed_s < b.amount  # seconds: a step may end past the limit; recorded as spent

    def charge(self, measured_flops: int, analytic_flops: int, examples: int, elapsed_s: float, steps_done: int) -> None:
        self._measured += measured_flops
        self._analytic += analytic_flops
        if self._analytic:
            self._ratio = max(1.0, self._measured / self._analytic)
        kind = self.budget.kind
        self.use.spent = {"flops": float(self._measured), "examples": self.use.spent + examples,
                          "steps": float(steps_done), "seconds": elapsed_s}[kind]

    def progress(self, elapsed_s: float, steps_done: int) -> float:
        """Fraction of the budget spent, for the learning-rate schedule."""
        b = self.budget
        value = {"flops": self.use.spent, "examples": self.use.spent, "steps": steps_done, "seconds": elapsed_s}[b.kind]
        return min(1.0, value / b.amount)

    def stop(self, reason: str, bound: bool) -> BudgetUse:
        if self.use.spent > self.budget.amount:  # a step cost more than predicted: say so, never hide it
            reason += f"; overspent by {self.use.spent - self.budget.amount:.3g} {self.budget.kind}"
        self.use.bound, self.use.stop_reason = bound, reason
        return self.use
