"""Shared-context log-likelihood scoring: each item's context and all of its choices in one packed row of one
forward pass, and a prefix every context shares (an ICL prompt's demonstrations) encoded once per evaluation.

lm-eval's HF model scores every (context, continuation) pair as its own sequence, so a four-choice
item re-encodes its context four times (it shares a forward only when every continuation is one
token), and k demonstrations are re-encoded for every choice of every query. Here:

1. When the adaptation is a prefix (`cache_prefix`), the longest token prefix that every context
   shares is encoded once; every pass reads its KV cache.
2. An item's row is its context (past the cached prefix) followed by each continuation but its last
   token, under a 4D attention mask: the context is causal, each continuation sees the context and,
   causally, itself, never another continuation; its position ids restart where the context ends. The
   logit at the context's last token predicts every continuation's first token, and the logit at a
   continuation's token i predicts its token i + 1: exactly the logits lm-eval reads for the pair, so each
   request gets what lm-eval returns for it, (sum of the continuation's log-probs, whether every token is
   the argmax). A choice costs its own tokens only (a one-token choice costs none).
3. Only those positions reach the output head (a pre-hook on the model's output embeddings gathers them),
   so the vocabulary-sized logits exist for the continuation positions only.

Rows are left-padded, and batches are planned by memory and padding (`plan_batches`): rows are taken
longest first, as many per pass as `engine.batch_size` allows, while padding stays within PADDING_SLACK
of the real tokens and the estimated memory of the pass (KV cache, activations, attention scores, the
mask, float32 log-probs over the vocabulary) fits in `memory_bytes`. An item whose row alone would not
fit is split into several rows, each with the context and some of the choices.

Requests lm-eval would truncate (context + continuation longer than max_length + 1), empty ones, and
every request of a model whose attention takes no 4D mask (only `sdpa` and `eager` do) go through
lm-eval's own path unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SCORERS = ("shared_context", "lm_eval")
MEMORY_FRACTION = 0.8  # of the memory available when scoring starts, for `memory_gib: auto`
PADDING_SLACK = 0.2  # a pass may hold at most this share more positions than real tokens (padding is wasted work)
MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that honour a 4D mask as given


def available_memory(device: torch.device) -> int:
    """Bytes free for scoring's transient tensors: CUDA's free memory, else the host's available memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_FRACTION)
    import psutil

    return int(psutil.virtual_memory().available * MEMORY_FRACTION)


class MemoryModel:
    """Bytes that one pass of the scorer holds at its peak, from the model's config and the pass's shape.

    Deliberately generous: it counts the prefix cache the pass reads and every row's copy of it with the
    row's own keys appended, two copies of the attention scores of the widest layer, the mask, the MLP's
    intermediate activations, and the float32 logits and log-probs over the vocabulary.
    """

    def __init__(self, model) -> None:
        cfg = model.config.get_text_config()  # a VLM's language model: its cache, its vocabulary
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        self.element = next(model.parameters()).element_size()
        self.kv_position = 2 * cfg.num_hidden_layers * kv_heads * head_dim * self.element  # K and V, every layer
        self.heads = heads
        self.hidden = cfg.hidden_size
        self.intermediate = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
        self.vocab = cfg.vocab_size

    def packed_pass(self, rows: int, width: int, prefix: int, logits: int) -> int:
        """A pass of `rows` rows of `width` positions over a `prefix`-position cache, with `logits` positions
        (all rows together) reaching the output head."""
        keys = prefix + width
        activations = rows * width * (4 * self.hidden + 3 * self.intermediate) * self.element
        scores = 2 * rows * self.heads * width * keys * 4  # float32 softmax inputs and outputs, one layer at a time
        mask = rows * width * keys * 4
        vocab = 3 * logits * self.vocab * 4  # logits (upcast) and log-probs in float32
        cache = prefix * self.kv_position + 2 * rows * keys * self.kv_position  # the prefix, and each row's copy
        return activations + scores + mask + vocab + cache


def padding_within(widths: list[int], slack: float) -> bool:
    """Widths sorted longest first: padding them all to the first keeps the positions within (1 + slack) x
    the real ones. The one rule for scoring's batches and generation's groups (harness/evaluate.py)."""
    return widths[0] * len(widths) <= (1 + slack) * sum(widths)


def split_rows(own: int, continuations: list[int], prefix: int, memory: MemoryModel, cap: int) -> list[list[int]]:
    """An item's rows: its continuations (their lengths, in order) grouped so that each row (the item's `own`
    context tokens past the prefix, then its continuations but their last tokens) fits `cap` alone. All of
    them in one row unless that does not fit; a single continuation always makes a row, however large."""
    rows: list[list[int]] = [[]]
    for j, n in enumerate(continuations):
        trial = rows[-1] + [j]
        extra = sum(continuations[k] - 1 for k in trial)
        if rows[-1] and memory.packed_pass(1, own + extra, prefix, 1 + extra) > cap:
            rows.append([j])
        else:
            rows[-1] = trial
    return rows


def plan_batches(widths: list[int], logits: list[int], prefix: int, size: int, memory: MemoryModel,
                 cap: int) -> list[list[int]]:
    """Passes, as lists of row indices (longest first). `widths[r]` is row r's positions, `logits[r]` how many
    of them reach the output head. A pass takes rows while `size` allows, its padded positions stay within
    PADDING_SLACK of its real ones, and its estimated memory fits `cap`; a single row always goes."""
    order = sorted(range(len(widths)), key=lambda r: -widths[r])
    plans = []
    at = 0
    while at < len(order):
        batch = [order[at]]
        while at + len(batch) < len(order) and len(batch) < size:
            trial = batch + [order[at + len(batch)]]
            if not padding_within([widths[r] for r in trial], PADDING_SLACK):
                break
            if memory.packed_pass(len(trial), widths[trial[0]], prefix, sum(logits[r] for r in trial)) > cap:
                break
            batch = trial
        at += len(batch)
        plans.append(batch)
    return plans


def shared_context_loglikelihoods(lm, requests: list, fallback, cache_prefix: bool = False,
                                  memory_bytes: int | None = None, progress: bool = True) -> list[tuple[float, bool]]:
    """Score lm-eval `requests` ((strings), context_tokens, continuation_tokens) on `lm` (a MeteredHFLM).

    `fallback(requests)` is lm-eval's own `_loglikelihood_tokens`, for the requests this path leaves to it.
    `cache_prefix`: encode the token prefix shared by every context once. `memory_bytes`: the cap the
    batches are planned under (None: what `available_memory` finds now). `progress`: a bar over the requests.
    """
    from tqdm import tqdm

    results: list = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    leftover = []
    attention = getattr(lm.model.config, "_attn_implementation", None) or "eager"
    details = lm._meter.cost.details
    if attention not in MASKED_ATTENTION:
        details["scorer_fallback"] = f"attention {attention!r} takes no 4D mask: every request scored by lm-eval's path"
    for i, (_, context, continuation) in enumerate(requests):
        if (attention not in MASKED_ATTENTION or not context or not continuation
                or len(context) + len(continuation) > lm.max_length + 1):
            leftover.append(i)
        else:
            groups.setdefault(tuple(context), []).append(i)
    if leftover:
        for i, answer in zip(leftover, fallback([requests[i] for i in leftover]), strict=True):
            results[i] = answer
    contexts = list(groups)
    prefix = _shared_prefix(contexts) if cache_prefix and len(contexts) > 1 else 0
    prefix_cache = _encode_prefix(lm, contexts[0][:prefix]) if prefix else None
    details["prefix_cached_tokens"] = prefix
    memory = MemoryModel(lm.model)
    cap = available_memory(lm.device) if memory_bytes is None else int(memory_bytes)
    rows = []  # (context, its requests in this row)
    for context in contexts:
        members = groups[context]
        for part in split_rows(len(context) - prefix, [len(requests[i][2]) for i in members], prefix, memory, cap):
            rows.append((context, [members[j] for j in part]))
    extra = [sum(len(requests[i][2]) - 1 for i in members) for _, members in rows]
    widths = [len(context) - prefix + e for (context, _), e in zip(rows, extra, strict=True)]
    plans = plan_batches(widths, [1 + e for e in extra], prefix, int(lm.batch_size), memory, cap)
    with tqdm(total=len(requests) - len(leftover), desc="Scoring (shared context)", disable=not progress) as bar:
        for batch in plans:
            _score_packed(lm, [rows[r] for r in batch], prefix, prefix_cache, requests, results)
            bar.update(sum(len(rows[r][1]) for r in batch))
    details["scoring_batches"] = details.get("scoring_batches", 0) + len(plans)
    details["scoring_rows"] = details.get("scoring_rows", 0) + len(rows)
    details["memory_cap_bytes"] = cap
    for i in (i for members in groups.values() for i in members):  # lm-eval's path caches its own
        if requests[i][0] is not None:
            lm.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
    return results


def _shared_prefix(contexts: list[tuple]) -> int:
    """Tokens every context starts with, leaving each at least one of its own (its last, whose logit is read)."""
    shortest = min(len(c) for c in contexts)
    first, common = contexts[0], shortest - 1
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


def _features(rows: int, new: int, cached: int, logits: int) -> tuple[int, ...]:
    """(rows x new, rows x new x keys, logit positions of the whole pass)."""
    return rows * new, rows * new * (cached + new), logits


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


def _attention_mask(allowed: torch.Tensor, model) -> torch.Tensor:
    """`allowed` [rows, queries, keys] as the model's attention takes a 4D mask: boolean for SDPA, additive
    (0 or the dtype's minimum) for eager attention."""
    allowed = allowed[:, None]
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)


def _score_packed(lm, rows: list[tuple[tuple, list[int]]], prefix: int, prefix_cache, requests, results) -> None:
    """One pass over `rows` ((context, its requests in the row)): each row left-padded, its context past the
    shared `prefix` (read from `prefix_cache`), then each request's continuation but its last token."""
    from transformers import DynamicCache

    own = [len(context) - prefix + sum(len(requests[i][2]) - 1 for i in members) for context, members in rows]
    width = max(own)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    allowed = torch.zeros(len(rows), width, prefix + width, dtype=torch.bool)
    allowed[:, :, :prefix] = True  # every query reads the shared prefix
    # Padding queries attend to themselves only: a query with no key would come out NaN, and a NaN value
    # poisons every query whose (zero) weight on it multiplies it.
    diagonal = torch.arange(width)
    allowed[:, diagonal, prefix + diagonal] = True
    gather = []  # (row, position) of the logits read, in order
    reads = []  # per request: (request index, its logits' indices into `gather`)
    for r, (context, members) in enumerate(rows):
        mine = context[prefix:]
        start = width - own[r]
        end = start + len(mine)
        ids[r, start:end] = torch.tensor(mine)
        positions[r, start:end] = torch.arange(prefix, len(context))
        allowed[r, start:end, prefix + start:prefix + end] = torch.ones(len(mine), len(mine), dtype=torch.bool).tril()
        gather.append((r, end - 1))  # the context's last token: predicts every continuation's first
        last, at = len(gather) - 1, end
        for i in members:
            feed = requests[i][2][:-1]
            n = len(feed)
            if n:
                ids[r, at:at + n] = torch.tensor(feed)
                positions[r, at:at + n] = torch.arange(len(context), len(context) + n)
                allowed[r, at:at + n, prefix + start:prefix + end] = True  # the context
                allowed[r, at:at + n, prefix + at:prefix + at + n] = torch.ones(n, n, dtype=torch.bool).tril()
            reads.append((i, [last] + list(range(len(gather), len(gather) + n))))
            gather.extend((r, at + k) for k in range(n))
            at += n
    flat = torch.tensor([r * width + p for r, p in gather], device=lm.device)
    targets = torch.tensor([t for i, _ in reads for t in requests[i][2]], device=lm.device)
    where = torch.tensor([g for _, picks in reads for g in picks], device=lm.device)
    owner = torch.tensor([n for n, (_, picks) in enumerate(reads) for _ in picks], device=lm.device)

    def gathered(module, args):  # the output head sees only the positions whose logits are read
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat)[None],) + tuple(args[1:])

    past = None
    if prefix:
        past = DynamicCache(ddp_cache_data=[(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1))
                                            for k, v in prefix_cache], config=lm.model.config)
    shape = lm._shape
    lm._meter.add(flops_analytic=shape.forward_cached(len(rows), width, prefix, logits=0)
                  + 2 * shape.head_params * len(gather), tokens=len(rows) * width)
    hook = lm.model.get_output_embeddings().register_forward_pre_hook(gathered)
    try:
        logits = _call(lm, ("packed", bool(prefix)), _features(len(rows), width, prefix, len(gather)),
                       input_ids=ids.to(lm.device), attention_mask=_attention_mask(allowed, lm.model).to(lm.device),
                       position_ids=positions.to(lm.device), past_key_values=past, use_cache=bool(prefix)).logits
    finally:
        hook.remove()
    del past
    if logits.numel() != len(gather) * logits.shape[-1]:
        raise RuntimeError(f"the model's output head returned logits of shape {tuple(logits.shape)} for "
                           f"{len(gather)} gathered positions: score with engine.scorer=lm_eval")
    logprobs = F.log_softmax(logits.reshape(len(gather), -1), dim=-1, dtype=lm.softmax_dtype)
    del logits
    # every request at once, one transfer to the host: its continuation's log-probs summed over its own
    # positions, and whether each of them is the argmax
    picked = logprobs[where, targets]
    misses = (logprobs.argmax(dim=-1)[where] != targets).to(picked.dtype)
    sums = torch.zeros(len(reads), dtype=picked.dtype, device=picked.device).index_add_(0, owner, picked)
    missed = torch.zeros(len(reads), dtype=picked.dtype, device=picked.device).index_add_(0, owner, misses)
    for (i, _), total, miss in zip(reads, sums.tolist(), missed.tolist(), strict=True):
        results[i] = (total, miss == 0)
