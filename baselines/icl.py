"""icl: k labeled demonstrations from the adaptation pool, prepended to every query.

Its cost is paid per query, so it counts against the budget as horizon × (extra cost per query).
When k demonstrations do not fit, the largest k that does is used and the record says so.
"""
from __future__ import annotations

import functools
import time

import torch

from harness.budget import BudgetUse
from harness.config_checks import as_int
from harness.errors import HarnessError
from harness.flops import ModelShape
from harness.strategy import AdaptContext, Adaptation, register_strategy


def build_prefix(ctx: AdaptContext, demos: list[dict]) -> str:
    delim = ctx.task.task.config.fewshot_delimiter
    return "".join(p + c + delim for p, c in (ctx.task.labeled_example(d) for d in demos))


def _rows(pool: list[dict], docs: list[dict]) -> list[int]:
    return [pool.index(d) for d in docs]


@register_strategy("icl")
class InContext:
    def validate(self, settings) -> None:
        as_int(settings.shots, "strategy.shots", minimum=0)

    def _extra_flops(self, ctx: AdaptContext, shape: ModelShape, prefix_tokens: int, query_tokens: float,
                     forwards: float) -> float:
        """Analytic extra FLOPs per query: every forward pass of the query carries the prefix."""
        p, q = prefix_tokens, query_tokens
        linear = 2 * (shape.matmul_params + shape.lora_params) * p
        attention = 4 * shape.n_layers * shape.n_heads * shape.head_dim * ((p + q) ** 2 - q ** 2)
        return forwards * (linear + attention)

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        b = ctx.budget
        wanted = int(ctx.settings.shots)
        demos = ctx.task.sample_pool(wanted, ctx.seed)
        shape = ModelShape.of(ctx.model)
        tok = ctx.tokenizer
        forwards, query_tokens = ctx.task.query_profile(tok)  # forward passes per query, tokens per pass

        @functools.lru_cache(maxsize=None)  # each k priced once (a seconds budget times a forward pass)
        def cost(k: int) -> float:
            prefix = build_prefix(ctx, demos[:k])
            n_tok = len(tok(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
            if b.kind == "flops":
                return b.horizon * self._extra_flops(ctx, shape, n_tok, query_tokens, forwards)
            if b.kind == "examples":
                return float(k)
            if b.kind == "seconds":
                return b.horizon * forwards * self._time_prefix(ctx, prefix)
            return 0.0  # a step budget does not limit ICL: it takes no training step

        k = wanted
        while k > 0 and cost(k) > b.amount:
            k -= 1
        spent = cost(k)
        bound = k < wanted
        reason = (f"{wanted} demonstrations cost {cost(wanted):.3g} {b.kind} over the horizon; {k} fit" if bound
                  else "all demonstrations fit")
        prefix = build_prefix(ctx, demos[:k])
        n_tok = len(tok(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
        window = getattr(getattr(ctx.model, "config", None), "max_position_embeddings", None)
        if window and n_tok + 2 * query_tokens > window:  # lm-eval would silently cut the oldest demonstrations
            raise HarnessError(f"icl: {k} demonstrations take {n_tok} tokens, beyond the model's context window "
                               f"({window}) with the query: lower strategy.shots")
        return Adaptation(
            kind="prefix" if k else "none", prefix=prefix or None, labels_used=k,
            budget=BudgetUse(b.name, b.kind, b.amount, b.horizon, spent, bound, reason),
            per_query_extra_flops=self._extra_flops(ctx, shape, n_tok, query_tokens, forwards),
            details={"shots_requested": wanted, "shots_used": k, "prefix_tokens": n_tok,
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
