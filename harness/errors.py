"""User-facing errors: one line naming the problem and the fix."""


class HarnessError(Exception):
    """Bad input or an unusable environment. The CLI prints it as one line and exits 2."""


class BudgetTooSmall(HarnessError):
    """The budget cannot pay for a single unit of work (one training step)."""
