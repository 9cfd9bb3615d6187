"""Progress lines on stderr, shared by the core and the strategies (a strategy needs no runner to speak)."""
from __future__ import annotations

import sys


def say(message: str) -> None:
    print(f"[harness] {message}", file=sys.stderr, flush=True)
