"""Shared-context log-likelihood scoring: each distinct context is encoded once, and all of its
continuations are scored against its KV cache in one batched pass; a prefix every context shares
(an ICL prompt's demonstrations) is encoded once per evaluation.

lm-eval's HF model scores every (context, continuation) pair as its own sequence, so a four-choice
item re-encodes its context four times (it shares a forward only when every continuation is one
token), and k demonstrations are re-encoded for every choice of every query. Here:

1. When the adaptation is a prefix (`cache_prefix`), the longest token prefix that every context
   shares is encoded once; every context pass starts from its KV cache.
2. The context pass runs over `context[P:-1]` (no logits needed but the last position's).
3. Each continuation pass feeds `[context[-1]] + continuation[:-1]` at positions C-1 ... C+L-2 over
   the context's cache: the logits that predict the continuation are the ones lm-eval reads, so each
   request gets what lm-eval returns for it: (sum of the continuation's log-probs, whether every
   token is the argmax). Only the continuation positions' logits ever exist.

Batches are sized by memory and padding (`plan_batches`): contexts are taken longest first, as many per
batch as `engine.batch_size` allows, the estimated memory of the batch's passes (KV caches, activations,
attention scores, float32 log-probs over the vocabulary) fits in `memory_bytes`, and padding stays within
PADDING_SLACK of the real tokens; continuations likewise, longest first.

Requests lm-eval would truncate (context + continuation longer than max_length + 1) or whose context
is a single token go through lm-eval's own path unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SCORERS = ("shared_context", "lm_eval")
MEMORY_FRACTION = 0.8  # of the memory available when scoring starts, for `memory_gib: auto`
PADDING_SLACK = 0.2  # a pass may hold at most this share more positions than real tokens (padding is wasted work)


def available_memory(device: torch.device) -> int:
    """Bytes free for scoring's transient tensors: CUDA's free memory, else the host's available memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_FRACTION)
    import psutil

    return int(psutil.virtual_memory().available * MEMORY_FRACTION)


class MemoryModel:
    """Bytes that one pass of the scorer holds at its peak, from the model's config and the pass's shape.

    Deliberately generous: it counts the cache the pass reads and the one it writes, every row's copy of
    its context's cache, two copies of the attention scores of the widest layer, the MLP's intermediate
    activations, and the float32 logits and log-probs over the vocabulary.
    """

    def __init__(self, model) -> None:
        cfg = model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        self.element = next(model.parameters()).element_size()
        self.kv_position = 2 * cfg.num_hidden_layers * kv_heads * head_dim * self.element  # K and V, every layer
        self.heads = heads
        self.hidden = cfg.hidden_size
        self.intermediate = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
        self.vocab = cfg.vocab_size

    def _pass(self, rows: int, new: int, keys: int, logits: int) -> int:
        activations = rows * new * (4 * self.hidden + 3 * self.intermediate) * self.element
        scores = 2 * rows * self.heads * new * keys * 4  # float32 softmax inputs and outputs, one layer at a time
        vocab = 3 * rows * logits * self.vocab * 4  # logits (upcast) and log-probs in float32
        return activations + scores + vocab + 2 * rows * keys * self.kv_position  # cache read (copied) and written

    def context_pass(self, rows: int, prefix: int, width: int) -> int:
        return self._pass(rows, width, prefix + width, 1) + prefix * self.kv_position

    def continuation_pass(self, contexts: int, context_width: int, rows: int, width: int) -> int:
        held = contexts * context_width * self.kv_position  # the context batch's cache, alive across its passes
        return held + self._pass(rows, width, context_width + width, width)


def padding_within(widths: list[int], slack: float) -> bool:
    """Widths sorted longest first: padding them all to the first keeps the positions within (1 + slack) x
    the real ones. The one rule for scoring's batches and generation's groups (harness/evaluate.py)."""
    return widths[0] * len(widths) <= (1 + slack) * sum(widths)


def plan_batches(lengths: list[int], prefix: int, conts: list[list[int]], size: int, memory: MemoryModel,
                 cap: int) -> list[tuple[list[int], list[list[int]]]]:
    """Context batches (indices into `lengths`, longest first) and, per batch, its continuation passes
    (each a list of continuation lengths' positions in the batch's flattened continuations, longest first).

    `lengths[c]` is context c's token count, `conts[c]` its continuations' lengths. A batch takes contexts
    while `size` allows, its padded positions stay within PADDING_SLACK of its real ones, and both its
    context pass and its first (widest) continuation pass fit `cap`; a continuation pass takes rows the same
    way. A single context or continuation always goes (nothing smaller exists), however large.
    """

    order = sorted(range(len(lengths)), key=lambda c: -lengths[c])
    plans = []
    at = 0
    while at < len(order):
        batch = [order[at]]
        while at + len(batch) < len(order) and len(batch) < size:
            trial = batch + [order[at + len(batch)]]
            if not padding_within([lengths[c] - 1 - prefix for c in trial], PADDING_SLACK):
                break
            width = max(lengths[c] for c in trial) - 1 - prefix
            widest = max(n for c in trial for n in conts[c])
            rows = min(size, sum(len(conts[c]) for c in trial))
            need = max(memory.context_pass(len(trial), prefix, width),
                       memory.continuation_pass(len(trial), prefix + width, rows, widest))
            if need > cap:
                break
            batch = trial
        at += len(batch)
        context_width = max(lengths[c] for c in batch) - 1
        flat = sorted(((n, c, j) for c in batch for j, n in enumerate(conts[c])), key=lambda x: -x[0])
        passes, first = [], 0
        while first < len(flat):
            rows = 1
            while (first + rows < len(flat) and rows < size
                   and padding_within([n for n, _, _ in flat[first:first + rows + 1]], PADDING_SLACK)
                   and memory.continuation_pass(len(batch), context_width, rows + 1, flat[first][0]) <= cap):
                rows += 1
            passes.append([(c, j) for _, c, j in flat[first:first + rows]])
            first += rows
        plans.append((batch, passes))
    return plans


def shared_context_loglikelihoods(lm, requests: list, fallback, cache_prefix: bool = False,
                                  memory_bytes: int | None = None) -> list[tuple[float, bool]]:
    """Score lm-eval `requests` ((strings), context_tokens, continuation_tokens) on `lm` (a MeteredHFLM).

    `fallback(requests)` is lm-eval's own `_loglikelihood_tokens`, for the requests this path leaves to it.
    `cache_prefix`: encode the token prefix shared by every context once. `memory_bytes`: the cap the
    batches are planned under (None: what `available_memory` finds now).
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
    contexts = list(groups)
    prefix = _shared_prefix(contexts) if cache_prefix and len(contexts) > 1 else 0
    prefix_cache = _encode_prefix(lm, contexts[0][:prefix]) if prefix else None
    lm._meter.cost.details["prefix_cached_tokens"] = prefix
    memory = MemoryModel(lm.model)
    cap = available_memory(lm.device) if memory_bytes is None else int(memory_bytes)
    continuations = [[len(requests[i][2]) for i in groups[c]] for c in contexts]
    plans = plan_batches([len(c) for c in contexts], prefix, continuations, int(lm.batch_size), memory, cap)
    for batch, passes in plans:
        chosen = [contexts[c] for c in batch]
        keys, values = _encode_contexts(lm, chosen, prefix, prefix_cache)
        where = {c: b for b, c in enumerate(batch)}
        for rows in passes:
            _score_rows(lm, chosen, keys, values, [(where[c], groups[contexts[c]][j]) for c, j in rows],
                        requests, results)
        del keys, values
    details = lm._meter.cost.details
    details["scoring_batches"] = details.get("scoring_batches", 0) + len(plans)
    details["memory_cap_bytes"] = cap
    for i in (i for members in groups.values() for i in members):  # lm-eval's path caches its own
        if requests[i][0] is not None:
            lm.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
    return results


def _shared_prefix(contexts: list[tuple]) -> int:
    """Tokens every context starts with, leaving each at least two of its own (one to encode, one to feed)."""
    shortest = min(len(c) for c in contexts)
    first, common = contexts[0], shortest - 2
    for context in contexts[1:]:
        n = 0
        while n < common and context[n] == first[n]:
            n += 1
        common = n
    return max(common, 0)


def _call(lm, key, features: tuple[int, ...], **inputs):
    """One forward pass, FLOP-counted: live, until the pass kind's count is known exactly as a linear function
    of its shape (`_features`; harness/flops.py LinearCounts)."""
    with torch.no_grad(), torch.autocast(device_type=lm.device.type, dtype=lm.mixed_precision_dtype,
                                         enabled=lm.mixed_precision_dtype is not None):
        if not lm._count:
            return lm.model(**inputs)
        with lm._meter.tally.count_linear(key, features):
            return lm.model(**inputs)


def _features(rows: int, new: int, cached: int, logits: int | None = None) -> tuple[int, ...]:
    """(rows x new, rows x new x keys[, rows x logit positions]): the last only where the head sees fewer
    positions than the pass's (with logits at every position it is the first feature again)."""
    if logits is None:
        return rows * new, rows * new * (cached + new)
    return rows * new, rows * new * (cached + new), rows * logits


def _encode_prefix(lm, tokens: tuple):
    """The shared prefix's per-layer keys and values, [1, heads, P, dim], computed once."""
    import time

    n = len(tokens)
    analytic = lm._shape.forward_cached(1, n, 0, logits=1)
    lm._meter.add(flops_analytic=analytic, tokens=n)
    ids = torch.tensor([tokens], device=lm.device)
    before, start = lm._meter.tally.total, time.perf_counter()
    out = _call(lm, "prefix", _features(1, n, 0, 1), input_ids=ids,
                position_ids=torch.arange(n, device=lm.device)[None], use_cache=True, logits_to_keep=1)
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    # paid once per evaluation, not per query: the record keeps it apart (per_query["once_per_evaluation"])
    lm._meter.cost.details["prefix_pass"] = {"tokens": n, "flops_measured": lm._meter.tally.total - before,
                                             "flops_analytic": analytic, "wall_s": time.perf_counter() - start}
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def _encode_contexts(lm, batch: list[tuple], prefix: int = 0, prefix_cache=None):
    """One right-padded pass over every context but its last token (and but the shared `prefix`, read from
    `prefix_cache`); returns the per-layer keys and values over positions 0 ... width of every context."""
    from transformers import DynamicCache

    width = max(len(c) for c in batch) - 1 - prefix
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), prefix + width, dtype=torch.long)
    mask[:, :prefix] = 1
    for b, context in enumerate(batch):
        ids[b, :len(context) - 1 - prefix] = torch.tensor(context[prefix:-1])
        mask[b, prefix:len(context) - 1] = 1
    positions = torch.arange(prefix, prefix + width).expand(len(batch), width)
    past = None
    if prefix:
        past = DynamicCache(ddp_cache_data=[(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1))
                                            for k, v in prefix_cache], config=lm.model.config)
    lm._meter.add(flops_analytic=lm._shape.forward_cached(len(batch), width, prefix, logits=1),
                  tokens=len(batch) * width)
    out = _call(lm, ("context", bool(prefix)), _features(len(batch), width, prefix, 1), input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device), position_ids=positions.to(lm.device), past_key_values=past,
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


def _score_rows(lm, batch, keys, values, rows, requests, results) -> None:
    """Continuations of `rows` ((context index in batch, request index)) against their contexts' caches."""
    from transformers import DynamicCache

    cached = max(len(batch[b]) for b, _ in rows) - 1
    width = max(len(requests[i][2]) for _, i in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), cached + width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    for r, (b, i) in enumerate(rows):
        context, continuation = batch[b], requests[i][2]
        ids[r, :len(continuation)] = torch.tensor([context[-1]] + continuation[:-1])
        targets[r, :len(continuation)] = torch.tensor(continuation)
        mask[r, :len(context) - 1] = 1
        mask[r, cached:cached + len(continuation)] = 1
        positions[r] = torch.arange(len(context) - 1, len(context) - 1 + width)
    pick = torch.tensor([b for b, _ in rows], device=keys[0].device)
    layers = [(k.index_select(0, pick)[:, :, :cached], v.index_select(0, pick)[:, :, :cached])
              for k, v in zip(keys, values, strict=True)]  # each row gets its own context's cache
    cache = DynamicCache(ddp_cache_data=layers, config=lm.model.config)
    lm._meter.add(flops_analytic=lm._shape.forward_cached(len(rows), width, cached), tokens=len(rows) * width)
    logits = _call(lm, "continuations", _features(len(rows), width, cached), input_ids=ids.to(lm.device),
                   attention_mask=mask.to(lm.device), position_ids=positions.to(lm.device), past_key_values=cache,
                   use_cache=True).logits
    del cache, layers
    logprobs = F.log_softmax(logits, dim=-1, dtype=lm.softmax_dtype)
    del logits
    # every row at once, one transfer to the host: the continuation's log-probs summed over its own positions,
    # and whether each of them is the argmax
    targets = targets.to(logprobs.device)
    real = (mask[:, cached:] == 1).to(logprobs.device)
    picked = logprobs.gather(2, targets.unsqueeze(-1)).squeeze(-1)
    sums = torch.where(real, picked, torch.zeros_like(picked)).sum(dim=1)
    greedy = ((logprobs.argmax(dim=-1) == targets) | ~real).all(dim=1)
    for (_, i), total, top in zip(rows, sums.tolist(), greedy.tolist(), strict=True):
        results[i] = (total, top)
