"""icl: k labeled demonstrations from the adaptation pool, prepended to every query.

Its cost is paid per query, so it counts against the budget as horizon × (extra cost per query).
When k demonstrations do not fit, the largest k that does is used and the record says so.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from harness.budget import BudgetUse
from harness.config_checks import as_int
from harness.errors import HarnessError
from harness.strategy import AdaptContext, Adaptation, Strategy
from harness.strategy_settings import settings_from


@dataclass(frozen=True)
class InContextSettings:
    """configs/strategy/icl.yaml."""

    shots: int  # demonstrations wanted; fewer when the budget or the context window cannot hold them

    def __post_init__(self) -> None:
        as_int(self.shots, "strategy.shots", minimum=0)


def build_prefix(ctx: AdaptContext, demos: list[dict]) -> str:
    delim = ctx.task.task.config.fewshot_delimiter
    return "".join(p + c + delim for p, c in (ctx.task.labeled_example(d) for d in demos))


def _rows(pool: list[dict], docs: list[dict]) -> list[int]:
    return [pool.index(d) for d in docs]


class InContext(Strategy):
    def validate(self, settings) -> None:
        settings_from(InContextSettings, settings)

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        b = ctx.budget
        wanted = settings_from(InContextSettings, ctx.settings).shots
        demos = ctx.task.sample_pool(wanted, ctx.seed)
        pricing = ctx.pricing

        @functools.lru_cache(maxsize=None)  # each k priced once (a seconds budget times a forward pass)
        def cost(k: int) -> float:
            """What k demonstrations cost over the horizon, in the budget's unit."""
            prefix = build_prefix(ctx, demos[:k])
            if b.kind == "flops":
                return b.horizon * pricing.extra(prefix) if k else 0.0
            if b.kind == "examples":
                return float(k)
            if b.kind == "seconds":
                return b.horizon * pricing.passes() * self._time_prefix(ctx, prefix)
            return 0.0  # a step budget does not limit ICL: it takes no training step

        k = wanted
        if cost(wanted) > b.amount:  # the price grows with k: the largest k that fits, by bisection
            lo, hi = 0, wanted  # cost(lo) fits, cost(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if cost(mid) <= b.amount else (lo, mid)
            k = lo
        bound = k < wanted
        reason = (f"{wanted} demonstrations cost {cost(wanted):.3g} {b.kind} over the horizon; {k} fit" if bound
                  else "all demonstrations fit")
        prefix = build_prefix(ctx, demos[:k])
        window = getattr(getattr(ctx.model, "config", None), "max_position_embeddings", None)
        longest = pricing.longest(prefix or None)
        if window and longest > window:  # lm-eval would silently cut the oldest demonstrations
            raise HarnessError(f"icl: {k} demonstrations make queries of up to {longest} tokens, beyond the model's "
                               f"context window ({window}): lower strategy.shots")
        extra = pricing.extra(prefix) if k else 0.0
        spent = cost(k)
        use = BudgetUse.of(b, own=spent if b.kind == "examples" else 0.0,
                           queries=spent if b.kind in ("flops", "seconds") else 0.0, bound=bound, reason=reason)
        return Adaptation(
            kind="prefix" if k else "none", prefix=prefix or None, labels_used=k, budget=use,
            per_query_extra_flops=extra,
            details={"shots_requested": wanted, "shots_used": k, "prefix_tokens": pricing.prefix_tokens(prefix),
                     "demo_rows": _rows(ctx.task.pool_docs, demos[:k]) if k <= 64 else None})

    @staticmethod
    def _time_prefix(ctx: AdaptContext, prefix: str) -> float:
        if not prefix:
            return 0.0
        ids = ctx.tokenizer(prefix, return_tensors="pt", add_special_tokens=False)["input_ids"].to(ctx.device)
        with torch.no_grad():
            ctx.model(ids)  # warm-up
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            ctx.model(ids)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
        return time.perf_counter() - start
