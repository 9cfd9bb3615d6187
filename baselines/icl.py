"""icl: k labeled demonstrations from the adaptation pool, prepended to every query.

Its cost is paid per query, so it counts against the budget as horizon × (extra cost per query), plus,
when the budget's `icl_pricing` is `cached` and the scorer keeps a prefix cache, the one pass that encodes
the demonstrations (harness/pricing.py `icl_prices`; the record states both prices). When k
demonstrations do not fit, the largest k that does is used and the record says so.
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

MODES = ("demonstrations", "full")


@dataclass(frozen=True)
class InContextSettings:
    """configs/strategy/icl.yaml."""

    mode: str  # demonstrations: k labeled examples; full: the whole pool (Lampinen et al.'s ICL arm)
    shots: int | None  # demonstrations wanted (null in full mode: every pool document); fewer when they do not fit

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HarnessError(f"strategy.mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        as_int(self.shots, "strategy.shots", minimum=0, allow_none=self.mode == "full")
        if self.mode == "demonstrations" and self.shots is None:
            raise HarnessError("strategy.shots must be set in mode demonstrations (null means the whole pool: "
                               "strategy.mode=full)")


def build_prefix(ctx: AdaptContext, demos: list[dict]) -> str:
    delim = ctx.task.task.config.fewshot_delimiter
    return "".join(p + c + delim for p, c in (ctx.task.demonstration(d) for d in demos))


def _rows(pool: list[dict], docs: list[dict]) -> list[int]:
    return [pool.index(d) for d in docs]


class InContext(Strategy):
    def adapts_images(self, settings) -> bool:
        return True  # text demonstrations (without their images) before the query and its image

    def validate(self, settings) -> None:
        settings_from(InContextSettings, settings)

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        b = ctx.budget
        settings = settings_from(InContextSettings, ctx.settings)
        full = settings.mode == "full"
        demos = ctx.task.sample_pool(settings.shots, ctx.seed)
        wanted = len(demos)
        pricing = ctx.pricing
        config = getattr(ctx.model, "config", None)  # a VLM's window is its language model's
        window = getattr(config.get_text_config() if config is not None else None, "max_position_embeddings", None)
        fit_window = len(demos)
        if full and window and pricing.longest(build_prefix(ctx, demos) or None) > window:
            # the whole pool does not fit: a seeded subsample (the shuffled pool's first documents) that does,
            # as the paper subsamples its largest datasets
            lo, hi = 0, len(demos)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if pricing.longest(build_prefix(ctx, demos[:mid]) or None) <= window else (lo, mid)
            fit_window = lo

        cached = b.icl_pricing == "cached"

        @functools.lru_cache(maxsize=None)  # each k priced once (a seconds budget times a forward pass)
        def parts(k: int) -> tuple[float, float]:
            """What k demonstrations cost in the budget's unit: (once per evaluation, over the horizon's queries)."""
            prefix = build_prefix(ctx, demos[:k])
            if not k or b.kind == "steps":  # a step budget does not limit ICL: it takes no training step
                return 0.0, 0.0
            if b.kind == "examples":
                return float(k), 0.0
            once, per_query = pricing.prefix_pass(prefix) if cached else 0.0, pricing.extra(prefix, cached=cached)
            if b.kind == "flops":
                return once, b.horizon * per_query
            # seconds: the prefix's forward timed once; the cached price scales it by FLOPs (one pass, then the
            # queries' extra attention), the recomputed one pays it in every pass that carries the context
            seconds = self._time_prefix(ctx, prefix)
            if cached and once:
                return seconds, b.horizon * per_query * seconds / once
            return 0.0, b.horizon * pricing.passes() * seconds

        def cost(k: int) -> float:
            return sum(parts(k))

        k = fit_window
        if cost(k) > b.amount:  # the price grows with k: the largest k that fits, by bisection
            lo, hi = 0, k  # cost(lo) fits, cost(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if cost(mid) <= b.amount else (lo, mid)
            k = lo
        bound = k < fit_window
        reason = (f"{fit_window} demonstrations cost {cost(fit_window):.3g} {b.kind} over the horizon; {k} fit" if bound
                  else "all demonstrations fit")
        if fit_window < wanted:
            reason = (f"the context window ({window} tokens) holds {fit_window} of the {wanted} pool documents "
                      f"(a seeded subsample); " + reason)
        prefix = build_prefix(ctx, demos[:k])
        longest = pricing.longest(prefix or None)
        if window and longest > window:  # lm-eval would silently cut the oldest demonstrations
            raise HarnessError(f"icl: {k} demonstrations make queries of up to {longest} tokens, beyond the model's "
                               f"context window ({window}): lower strategy.shots")
        extra = pricing.extra(prefix, cached=cached) if k else 0.0
        once, queries = parts(k)
        use = BudgetUse.of(b, own=once, queries=queries, bound=bound, reason=reason)
        prices = pricing.icl_prices(prefix, b.horizon) if k else {}
        return Adaptation(
            kind="prefix" if k else "none", prefix=prefix or None, labels_used=k, budget=use,
            per_query_extra_flops=extra,
            details={"mode": settings.mode, "shots_requested": wanted, "shots_used": k,
                     "pool_documents": len(ctx.task.pool_docs) if full else None,
                     "prefix_tokens": pricing.prefix_tokens(prefix),
                     "demo_rows": _rows(ctx.task.pool_docs, demos[:k]) if k <= 64 else None,
                     "icl_pricing": b.icl_pricing, "flops_over_horizon": prices})

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
