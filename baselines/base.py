"""base: the model as it is, zero-shot. Consumes nothing."""
from harness.budget import BudgetUse
from harness.strategy import AdaptContext, Adaptation, Strategy


class Base(Strategy):
    def adapts_images(self, settings) -> bool:
        return True  # nothing to adapt: the VLM as it is

    def uses_seed(self, settings) -> bool:
        return False

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        return Adaptation(kind="none", budget=BudgetUse.of(ctx.budget, reason="nothing to spend"))
