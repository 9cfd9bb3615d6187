"""What one query costs: analytic FLOPs on the base model and on an adapted one.

A budget pays `horizon ×` what an adaptation adds to every query (ICL's demonstrations, an unmerged
adapter's 2·N_lora per token), so that price must be known before any query is answered. The pricer
renders sample queries exactly as lm-eval will (the same context, the chat template when it is used,
one request per choice) and splits them into the forward passes the engine's scorer makes:
- `lm_eval` (lm-eval's HF path): one pass per request over context + continuation[:-1] (requests whose
  context + continuation[:-1] coincide share one pass);
- `shared_context` (harness/scoring.py): one packed row per distinct context: the context, then every
  continuation but its last token; the head sees only the positions whose logits are read (the context's
  last token and the continuations' fed tokens). With `cached=True` the prefix (ICL's
  demonstrations) is read from a cache computed once per evaluation (`prefix_pass`), so a query pays
  only its own tokens' attention over the prefix; `cached=False` prices the prefix re-encoded with every
  query, the price papers quote. Generation does not cache the prefix: both prices agree there.

A generation query is one prefill plus
one step per generated token against the growing cache, so its price depends on the output length:
the task's `max_gen_toks` (the worst case) unless the base model's measured mean on this task is
known. After evaluation the runner prices the evaluated items again with the measured length, which
is what the record compares with the prediction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache

from harness.flops import ModelShape
from harness.tasks import TaskHandle
from harness.trainer import LoraSettings, encode_pair, lora_param_count

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF model when a task sets none
SAMPLE_DOCS = 64


@dataclass(frozen=True)
class OutputLength:
    """Generated tokens per query (one sample) used to price generation, and where the figure came from."""

    tokens: float
    source: str  # "max_gen_toks" or "measured: <base cell folder>"


def max_gen_toks(task: TaskHandle) -> int:
    gen = task.task.config.generation_kwargs or {}
    return int(gen.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))


class QueryPricer:
    """Per-query analytic FLOPs of the base model and of an adaptation, on pool queries or given ones."""

    def __init__(self, task: TaskHandle, tokenizer, shape: ModelShape, output: OutputLength | None = None,
                 n_docs: int = SAMPLE_DOCS, scorer: str = "lm_eval") -> None:
        self.task, self.tokenizer, self.scorer = task, tokenizer, scorer
        # whether the engine reads a prefix from a cache computed once (what `cached` prices can mean)
        self.caches_prefix = scorer == "shared_context" and not task.generative
        self.shape = replace(shape, lora_params=0)
        self.output = output or OutputLength(float(max_gen_toks(task)), "max_gen_toks")
        pool = task.pool_docs
        # Pool rows are priced as queries: a loader that marks its rows (LiveCodeBench's `harness_split`, whose
        # pool rows refuse to render without a reference answer) sees them as evaluated rows.
        self.docs = [{**d, "harness_split": "eval"} if "harness_split" in d else d
                     for d in (task.sample_pool(min(n_docs, len(pool)), 0) if pool else [])]
        self.source = "pool"
        if not self.docs:  # no pool to price on: the evaluated prompts (their lengths only; no label is read)
            evaluated = task.eval_docs
            self.docs = [evaluated[i] for i in task.eval_indices(min(n_docs, len(evaluated)), 0)]
            self.source = "eval prompts (empty pool)"
        self._encode = lru_cache(maxsize=4096)(self._encode_uncached)  # per pricer: texts repeat across k
        self._pair = lru_cache(maxsize=4096)(self._pair_uncached)
        self._rendered: dict[tuple, list[tuple]] = {}
        self._patches: dict[str, list[int]] = {}  # a multimodal doc's images: vision-tower patches of each

    def _encode_uncached(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _pair_uncached(self, context: str, continuation: str) -> tuple[int, int]:
        """Token counts of (context, continuation), split by lm-eval's own rule."""
        ctx, cont = encode_pair(self.tokenizer, context, continuation)
        return len(ctx), len(cont)

    def _requests(self, doc: dict, prefix: str | None) -> list:
        """lm-eval's requests for `doc` with `prefix` as the task description (what evaluation does)."""
        from harness.evaluate import render_requests

        return render_requests(self.task, doc, prefix)

    def _passes(self, doc: dict, prefix: str | None, cached: bool = False) -> list[tuple[int, int, int | None]]:
        """The forward passes the scorer makes for `doc`, as (new tokens, cached positions, logit positions or
        None for all): log-likelihood requests as the scorer groups them; for generation, the prompt
        (prefilled once per sample)."""
        cached = bool(cached and prefix and self.caches_prefix)
        key = (json.dumps(doc, sort_keys=True, default=str), prefix or "", cached)
        if key not in self._rendered:  # lm-eval compiles its Jinja templates on every render: render once
            self._rendered[key] = self._passes_uncached(doc, prefix, cached)
        return self._rendered[key]

    def _passes_uncached(self, doc: dict, prefix: str | None, cached: bool) -> list[tuple[int, int, int | None]]:
        requests = self._requests(doc, prefix)
        if self.task.generative:
            return [(self._prompt_tokens(doc, requests[0].arguments[0]), 0, None)] * \
                int(self.task.task.config.repeats or 1)
        if self.scorer != "shared_context":
            passes: dict[tuple, int] = {}
            for req in requests:
                context, continuation = req.arguments[0], req.arguments[1]
                ctx, cont = self._pair(context, continuation)
                # lm-eval groups requests by context + continuation[:-1]: one-token continuations of a shared
                # context ride on one forward pass of ctx + cont - 1 positions.
                key = (context, continuation if cont > 1 else "")
                passes[key] = max(passes.get(key, 0), ctx + cont - 1)
            return [(max(1, n), 0, None) for n in passes.values()]
        shared = self.prefix_tokens(prefix) if cached else 0
        contexts: dict[str, list[int]] = {}  # context -> [its tokens, continuation tokens fed]
        for req in requests:
            context, continuation = req.arguments[0], req.arguments[1]
            ctx, cont = self._pair(context, continuation)
            entry = contexts.setdefault(context, [max(ctx, 1), 0])
            entry[1] += cont - 1
        out = []
        for ctx, fed in contexts.values():  # one packed row: context (its prefix read from the cache) + choices
            p = min(shared, ctx - 1)
            out.append((ctx - p + fed, p, 1 + fed))
        return out

    def _prompt_tokens(self, doc: dict, context: str) -> int:
        """Tokens of a generation prompt: for an item with images, as the model's processor encodes it (each image
        expanded into its image tokens), its images' patches kept for the vision tower's price."""
        processor = self.task.processor
        if not self.task.multimodal or processor is None:
            return self._encode(context)
        from harness.vision import image_patches

        encoded = processor(text=[self.task.model_text(context)], images=[self.task.images(doc)], return_tensors="pt")
        self._patches[json.dumps(doc, sort_keys=True, default=str)] = image_patches(encoded, self.shape.patch_size)
        return int(encoded["input_ids"].shape[1])

    def _doc_flops(self, doc: dict, prefix: str | None, shape: ModelShape, gen_tokens: float,
                   cached: bool = False) -> float:
        passes = self._passes(doc, prefix, cached)
        if self.task.generative:
            patches = self._patches.get(json.dumps(doc, sort_keys=True, default=str), [])
            return sum(shape.generate(1, n, gen_tokens) + shape.vision_forward(patches) for n, _, _ in passes)
        return sum(shape.forward_cached(1, new, old, logits) for new, old, logits in passes)

    def passes(self) -> float:
        """Mean forward passes (packed rows, for the shared-context scorer; prefills, for generation) per query
        that carry the context."""
        return sum(len(self._passes(d, None)) for d in self.docs) / max(1, len(self.docs))

    def longest(self, prefix: str | None = None) -> int:
        """The longest input among the sample queries: context + continuation, or prompt + max_gen_toks."""
        if self.task.generative:
            extra = max_gen_toks(self.task)
            return max((new + extra for d in self.docs for new, _, _ in self._passes(d, prefix)), default=0)
        # positions, not pass widths: a packed row holds several choices, each at positions context ... context + n
        return max((sum(self._pair(r.arguments[0], r.arguments[1])) for d in self.docs
                    for r in self._requests(d, prefix)), default=0)

    def flops(self, prefix: str | None = None, lora_params: int = 0, gen_tokens: float | None = None,
              docs: list[dict] | None = None, cached: bool = False) -> float:
        """Mean analytic FLOPs of one query (every sample of it), adapted by `prefix` and/or an unmerged
        adapter of `lora_params` weights; `cached`: the prefix read from its cache (see `prefix_pass`)."""
        docs = self.docs if docs is None else docs
        if not docs:
            return 0.0
        shape = replace(self.shape, lora_params=int(lora_params))
        g = self.output.tokens if gen_tokens is None else float(gen_tokens)
        return sum(self._doc_flops(d, prefix, shape, g, cached) for d in docs) / len(docs)

    def extra(self, prefix: str | None = None, lora_params: int = 0, gen_tokens: float | None = None,
              docs: list[dict] | None = None, cached: bool = False) -> float:
        """What the adaptation adds to one query, over the base model on the same queries (`cached`: the
        prefix read from the cache `prefix_pass` computes once, where the scorer keeps one)."""
        if not prefix and not lora_params:
            return 0.0
        return (self.flops(prefix, lora_params, gen_tokens, docs, cached)
                - self.flops(None, 0, gen_tokens, docs))

    def prefix_tokens(self, prefix: str | None) -> int:
        return self._encode(prefix) if prefix else 0

    def prefix_pass(self, prefix: str | None) -> float:
        """FLOPs of encoding `prefix` once into the cache every query reads (0 where the scorer keeps none)."""
        if not prefix or not self.caches_prefix:
            return 0.0
        return float(self.shape.forward_cached(1, self.prefix_tokens(prefix), 0, logits=1))

    def icl_prices(self, prefix: str | None, horizon: int, docs: list[dict] | None = None) -> dict:
        """A prefix priced both ways over `horizon` queries: `cached` (one prefix pass, then each query's own
        tokens over the cache: what the shared-context scorer runs) and `recompute` (the prefix re-encoded
        with every query, as papers price ICL)."""
        once = self.prefix_pass(prefix)
        cached, recompute = self.extra(prefix, docs=docs, cached=True), self.extra(prefix, docs=docs)
        return {"prefix_cached": bool(once), "prefix_pass_flops": once,
                "per_query_extra_cached": cached, "per_query_extra_recompute": recompute,
                "cached": once + horizon * cached, "recompute": horizon * recompute}

    def describe(self) -> dict:
        """The output length generation is priced with, and where it came from (None for log-likelihood tasks)."""
        generative = self.task.generative
        return {"gen_tokens": self.output.tokens if generative else None,
                "gen_tokens_source": self.output.source if generative else None}


def lora_serving(pricing: QueryPricer, model, lora: LoraSettings) -> tuple[float, int]:
    """(extra FLOPs per query, adapter weights) of serving the LoRA that `lora` trains on `model`, unmerged:
    every query pays 2·N_lora per token it processes, generated ones included (a budget reserves horizon × it)."""
    n_lora = lora_param_count(model, lora)
    return pricing.extra(lora_params=n_lora), n_lora
