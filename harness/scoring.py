"""Shared-context log-likelihood scoring: each distinct context is encoded once, and all of its
continuations are scored against its KV cache in one batched pass.

lm-eval's HF model scores every (context, continuation) pair as its own sequence, so a four-choice
item re-encodes its context four times (it shares a forward only when every continuation is one
token). Here the context pass runs over `context[:-1]` (no logits needed), and each continuation
pass feeds `[context[-1]] + continuation[:-1]` at positions C-1 ... C+L-2 over the cache: the logits
that predict the continuation are the ones lm-eval reads, so each request gets exactly what lm-eval
returns for it: (sum of the continuation's log-probs, whether every token is the argmax).

Requests lm-eval would truncate (context + continuation longer than max_length + 1) or whose context
is a single token go through lm-eval's own path unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SCORERS = ("shared_context", "lm_eval")


def shared_context_loglikelihoods(lm, requests: list, fallback) -> list[tuple[float, bool]]:
    """Score lm-eval `requests` ((strings), context_tokens, continuation_tokens) on `lm` (a MeteredHFLM).

    `fallback(requests)` is lm-eval's own `_loglikelihood_tokens`, for the requests this path leaves to it.
    """
    results: list = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    leftover = []
    for i, (_, context, continuation) in enumerate(requests):
        if len(context) < 2 or len(context) + len(continuation) > lm.max_length + 1:
            leftover.append(i)
        else:
            groups.setdefault(tuple(context), []).append(i)
    if leftover:
        for i, answer in zip(leftover, fallback([requests[i] for i in leftover]), strict=True):
            results[i] = answer
    size = int(lm.batch_size)
    contexts = sorted(groups, key=len, reverse=True)  # longest first: little padding, OOM at once
    for start in range(0, len(contexts), size):
        batch = contexts[start:start + size]
        keys, values = _encode_contexts(lm, batch)
        rows = [(b, i) for b, context in enumerate(batch) for i in groups[context]]
        rows.sort(key=lambda row: -len(requests[row[1]][2]))  # passes of similar continuation lengths: little padding
        for first in range(0, len(rows), size):
            _score_rows(lm, batch, keys, values, rows[first:first + size], requests, results)
    for i in (i for members in groups.values() for i in members):  # lm-eval's path caches its own
        if requests[i][0] is not None:
            lm.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
    return results


def _call(lm, key, **inputs):
    with torch.no_grad(), torch.autocast(device_type=lm.device.type, dtype=lm.mixed_precision_dtype,
                                         enabled=lm.mixed_precision_dtype is not None):
        if not lm._count:
            return lm.model(**inputs)
        with lm._meter.count(key):
            return lm.model(**inputs)


def _encode_contexts(lm, batch: list[tuple]):
    """One right-padded pass over every context but its last token; returns the per-layer keys and values."""
    width = max(len(c) for c in batch) - 1
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for b, context in enumerate(batch):
        ids[b, :len(context) - 1] = torch.tensor(context[:-1])
        mask[b, :len(context) - 1] = 1
    positions = torch.arange(width).expand(len(batch), width)
    lm._meter.add(flops_analytic=lm._shape.forward_cached(len(batch), width, 0, logits=1), tokens=len(batch) * width)
    out = _call(lm, ("shared_context", len(batch), width), input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device), position_ids=positions.to(lm.device), use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


def _score_rows(lm, batch, keys, values, rows, requests, results) -> None:
    """Continuations of `rows` ((context index in batch, request index)) against their contexts' caches."""
    from transformers import DynamicCache

    cached = max(len(batch[b]) for b, _ in rows) - 1
    width = max(len(requests[i][2]) for _, i in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), cached + width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    for r, (b, i) in enumerate(rows):
        context, continuation = batch[b], requests[i][2]
        ids[r, :len(continuation)] = torch.tensor([context[-1]] + continuation[:-1])
        mask[r, :len(context) - 1] = 1
        mask[r, cached:cached + len(continuation)] = 1
        positions[r] = torch.arange(len(context) - 1, len(context) - 1 + width)
    pick = torch.tensor([b for b, _ in rows], device=keys[0].device)
    layers = [(k.index_select(0, pick)[:, :, :cached], v.index_select(0, pick)[:, :, :cached])
              for k, v in zip(keys, values, strict=True)]  # each row gets its own context's cache
    cache = DynamicCache(ddp_cache_data=layers, config=lm.model.config)
    lm._meter.add(flops_analytic=lm._shape.forward_cached(len(rows), width, cached), tokens=len(rows) * width)
    logits = _call(lm, ("continuations", len(rows), width, cached), input_ids=ids.to(lm.device),
                   attention_mask=mask.to(lm.device), position_ids=positions.to(lm.device), past_key_values=cache,
                   use_cache=True).logits
    logprobs = F.log_softmax(logits, dim=-1, dtype=lm.softmax_dtype)
    for r, (_, i) in enumerate(rows):
        continuation = requests[i][2]
        scored = logprobs[r, :len(continuation)]
        target = torch.tensor(continuation, device=scored.device)
        greedy = bool((scored.argmax(dim=-1) == target).all())
        results[i] = (float(scored.gather(1, target.unsqueeze(-1)).sum()), greedy)
