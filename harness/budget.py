"""Budgets: what is matched between strategies, and the meter that stops work when it is spent.

A budget pays for everything a strategy adds on top of the base model over the query horizon:
its one-off adaptation work (training, generation, ...) plus, for strategies that lengthen every
query (ICL demonstrations), `horizon` times the extra per-query cost.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from harness.errors import BudgetTooSmall, HarnessError

KINDS = ("flops", "seconds", "examples", "steps")
ONE_OFF = ("amortized", "whole", "excluded")
ICL_PRICING = ("cached", "recompute")
# One-off phases (a generator's library and training) are charged in the cost kinds only: an `examples`
# budget counts the target's own labels and a `steps` budget the target's own optimizer steps.
ONE_OFF_FIELD = {"flops": "flops_measured", "seconds": "wall_s"}


@dataclass(frozen=True)
class Budget:
    name: str
    kind: str
    amount: float
    horizon: int  # queries the adapted model is expected to answer
    one_off: str  # how a one-off phase shared by several targets is charged: amortized | whole | excluded
    icl_pricing: str  # ICL's prefix: cached (encoded once, as run) | recompute (re-encoded per query, as papers price)

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
        one_off = cfg.get("one_off")
        if one_off not in ONE_OFF:
            raise HarnessError(f"budget {cfg.name}: one_off must be one of {', '.join(ONE_OFF)} (got {one_off!r}): "
                               f"set budget.one_off=amortized to share one-off phases among the targets that use them")
        icl_pricing = cfg.get("icl_pricing")
        if icl_pricing not in ICL_PRICING:
            raise HarnessError(f"budget {cfg.name}: icl_pricing must be one of {', '.join(ICL_PRICING)} (got "
                               f"{icl_pricing!r}): set budget.icl_pricing=cached to charge ICL's prefix as it runs")
        return cls(str(cfg.name), kind, amount, horizon, str(one_off), str(icl_pricing))


def one_off_share(costs, kind: str, policy: str, targets: dict[str, int] | None = None) -> float:
    """What the one-off phases among `costs` charge one target, in the budget's unit.

    `amortized` divides each shared phase by the targets that share it: `targets[artifact]` when the
    caller counted them (the report, from the store), else the phase's declared `shared_by`.
    """
    field = ONE_OFF_FIELD.get(kind)
    if field is None or policy == "excluded":
        return 0.0
    total = 0.0
    for cost in costs:
        c = cost if isinstance(cost, dict) else cost.to_dict()
        if not c.get("shared_by"):
            continue
        n = (targets or {}).get(c.get("artifact") or "", c["shared_by"]) if policy == "amortized" else 1
        total += float(c[field]) / max(1, n)
    return total


@dataclass
class BudgetUse:
    """What a strategy spent against its budget; stored in the record.

    `spent` = `parts["own"]` (this target's adaptation) + `parts["queries"]` (horizon × what the
    adaptation adds to every query, predicted) + `parts["one_off"]` (its share of one-off phases, by
    the budget's policy, over the targets declared when it ran). After evaluation the runner prices the
    queries again with the measured outputs (`after_eval`); `overspent` is what that exceeds the amount by.
    """

    name: str
    kind: str
    amount: float
    horizon: int
    spent: float = 0.0
    bound: bool = False  # True when the budget, not the strategy's own limit, stopped the work
    stop_reason: str = ""
    one_off: str = ""
    parts: dict = field(default_factory=dict)
    after_eval: dict | None = None
    overspent: float = 0.0

    @classmethod
    def of(cls, budget: Budget, own: float = 0.0, queries: float = 0.0, one_off: float = 0.0, bound: bool = False,
           reason: str = "") -> "BudgetUse":
        return cls(budget.name, budget.kind, budget.amount, budget.horizon, own + queries + one_off, bound, reason,
                   budget.one_off, {"own": own, "queries": queries, "one_off": one_off})

    def to_dict(self) -> dict:
        return asdict(self)


def check_one_off_fits(budget: Budget, share: float, rest: float, what: str, fix: str) -> None:
    """One-line error before any compute when a one-off share (plus what the cell itself needs) cannot fit."""
    if budget.kind not in ONE_OFF_FIELD or share + rest <= budget.amount:
        return
    unit = "FLOPs" if budget.kind == "flops" else "s"
    head = f"budget {budget.name} ({budget.amount:.3g} {unit}) cannot pay for {what}"
    if share > budget.amount:
        head += f": charged {budget.one_off}, this target's share alone is ~{share:.3g} {unit}"
    else:
        head += (f": its share charged {budget.one_off} (~{share:.3g} {unit}) and this target's own cost "
                 f"(~{rest:.3g} {unit}) exceed it by ~{share + rest - budget.amount:.3g}")
    raise BudgetTooSmall(f"{head}: raise budget.amount, {fix}")


class TrainingBudget:
    """Decides, step by step, whether another training step fits the budget.

    Training may spend the amount less `reserved` (what the budget keeps for serving the adapter over
    the horizon, or for a one-off share). FLOPs are charged as measured; the next step is predicted from
    its analytic cost scaled by the measured/analytic ratio seen so far (seconds: from the average step
    so far). Should a step still cost more than predicted, the overspend is written into the stop
    reason. An `examples` budget counts distinct labeled examples, which the strategy
    fixes before training: it never stops a step (the strategy's epochs or max_steps do).
    """

    def __init__(self, budget: Budget, reserved: float = 0.0) -> None:
        self.budget = budget
        self.limit = budget.amount - reserved
        self.use = BudgetUse.of(budget)
        self._ratio = 1.0
        self._measured = 0
        self._analytic = 0

    def check_first_step(self, analytic_step_flops: int) -> None:
        b = self.budget
        if b.kind == "flops" and analytic_step_flops > self.limit:
            left = "" if self.limit == b.amount else f" after reserving {b.amount - self.limit:.3g} for serving"
            raise BudgetTooSmall(
                f"budget {b.name} ({b.amount:.3g} FLOPs{left}) is smaller than one training step "
                f"(~{analytic_step_flops:.3g} FLOPs): raise budget.amount or lower strategy.batch_size")
        if b.kind == "steps" and b.amount < 1:
            raise BudgetTooSmall(f"budget {b.name} allows no training step: set budget.amount >= 1")

    def fits(self, analytic_step_flops: int, elapsed_s: float, steps_done: int) -> bool:
        kind = self.budget.kind
        if kind == "flops":
            return self.use.spent + analytic_step_flops * self._ratio <= self.limit
        if kind == "steps":
            return steps_done + 1 <= self.budget.amount
        if kind == "seconds":  # the next step, predicted to last as long as the average one so far, must end in time
            return elapsed_s + (elapsed_s / steps_done if steps_done else 0.0) <= self.limit
        return True  # examples: the labels were chosen before training

    def charge(self, measured_flops: int, analytic_flops: int, elapsed_s: float, steps_done: int) -> None:
        self._measured += measured_flops
        self._analytic += analytic_flops
        if self._analytic:
            self._ratio = max(1.0, self._measured / self._analytic)
        kind = self.budget.kind
        self.use.spent = {"flops": float(self._measured), "examples": self.use.spent,
                          "steps": float(steps_done), "seconds": elapsed_s}[kind]

    def progress(self, elapsed_s: float, steps_done: int) -> float:
        """Fraction of the budget spent, for the learning-rate schedule (0 for examples: see max_steps)."""
        kind = self.budget.kind
        if kind == "examples":
            return 0.0
        value = {"flops": self.use.spent, "steps": steps_done, "seconds": elapsed_s}[kind]
        limit = self.budget.amount if kind == "steps" else self.limit
        return min(1.0, value / limit) if limit > 0 else 1.0

    def stop(self, reason: str, bound: bool) -> BudgetUse:
        if self.budget.kind != "examples" and self.use.spent > self.limit:  # a step cost more than predicted
            reason += f"; overspent by {self.use.spent - self.limit:.3g} {self.budget.kind}"
        self.use.bound, self.use.stop_reason = bound, reason
        self.use.parts["own"] = self.use.spent
        return self.use
