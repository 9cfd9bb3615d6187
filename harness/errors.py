"""User-facing errors: one line naming the problem and the fix."""


class HarnessError(Exception):
    """Bad input or an unusable environment. The CLI prints it as one line and exits 2."""


class BudgetTooSmall(HarnessError):
    """The budget cannot pay for a single unit of work (one training step)."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's message cut to one line, for quoting a library's error inside ours."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
