"""base: the model as it is, zero-shot. Consumes nothing."""
from harness.budget import BudgetUse
from harness.strategy import AdaptContext, Adaptation, register_strategy


@register_strategy("base")
class Base:
    def validate(self, settings) -> None:
        pass

    def uses_seed(self, settings) -> bool:
        return False

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        b = ctx.budget
        return Adaptation(kind="none", budget=BudgetUse(b.name, b.kind, b.amount, b.horizon, 0.0, False, "nothing to spend"))
