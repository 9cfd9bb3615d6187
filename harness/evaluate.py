"""Evaluation through lm-eval's own evaluator, on the (possibly adapted) model, with costs metered.

The evaluator only sees an adaptation's kind: an adapter directory (loaded with peft, unmerged,
as `lm_eval --model_args peft=...` does), an in-context prefix (prepended to every prompt through
the task's description), or nothing. It never knows which strategy produced it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.costs import PhaseCost, PhaseMeter
from harness.errors import HarnessError, first_line
from harness.codeeval import GRADES
from harness.flops import ModelShape
from harness.models import ARROW, adapter_problem, arrow_routing
from harness.scoring import SCORERS, padding_within, shared_context_loglikelihoods
from harness.tasks import TaskHandle, quiet_lm_eval
from harness.vision import is_vision_model


@dataclass
class EvalResult:
    metrics: dict
    samples: list[dict]
    cost: PhaseCost
    n: int
    per_query: dict = field(default_factory=dict)
    lm_eval_config: dict = field(default_factory=dict)


def metered_lm_class():
    from lm_eval.models.huggingface import HFLM

    class MeteredHFLM(HFLM):
        """lm-eval's HF model, with every forward pass FLOP-counted and its tokens tallied."""

        def __init__(self, *args, meter: PhaseMeter, shape: ModelShape, count_flops: bool = True,
                     scorer: str = "lm_eval", cache_prefix: bool = False, memory_bytes: int | None = None,
                     **kwargs):
            super().__init__(*args, **kwargs)
            self._meter, self._shape, self._count, self._scorer = meter, shape, count_flops, scorer
            self._cache_prefix, self._memory_bytes = cache_prefix, memory_bytes

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            # harness/scoring.py: each context encoded once; lm-eval's own path when asked, or for what it
            # cannot share (a seq2seq model, an automatic batch size).
            if self._scorer != "shared_context" or self.backend != "causal" or not isinstance(self.batch_size, int):
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            return shared_context_loglikelihoods(
                self, requests, lambda rest: super(MeteredHFLM, self)._loglikelihood_tokens(rest, disable_tqdm=True),
                cache_prefix=self._cache_prefix, memory_bytes=self._memory_bytes, progress=not disable_tqdm)

        def _model_call(self, inps, attn_mask=None, labels=None):
            batch, seq = inps.shape
            self._meter.add(flops_analytic=self._shape.forward(batch, seq), tokens=batch * seq)
            if not self._count:
                return super()._model_call(inps, attn_mask, labels)
            key = ("forward", tuple(inps.shape), attn_mask is not None, labels is not None)
            with self._meter.count(key):
                return super()._model_call(inps, attn_mask, labels)

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            """lm-eval's batch, generated in groups of similar prompt lengths (`generation_groups`) so that one
            long prompt does not pad the others; the rows come back left-padded to the batch's width, as
            lm-eval's caller slices them."""
            mask = generation_kwargs.get("attention_mask")
            if mask is None or context.shape[0] == 1 or self.backend != "causal":
                return self._generate_metered(context, max_length, stop, **generation_kwargs)
            lengths = [int(n) for n in mask.sum(dim=1)]
            groups = generation_groups(lengths)
            if len(groups) == 1:
                return self._generate_metered(context, max_length, stop, **generation_kwargs)
            batch, width = context.shape
            new = max_length - width
            outs = []
            for rows in groups:
                w = max(lengths[r] for r in rows)
                pick = torch.tensor(rows, device=context.device)
                sub = {**generation_kwargs, "attention_mask": mask.index_select(0, pick)[:, width - w:]}
                outs.append((rows, w, self._generate_metered(context.index_select(0, pick)[:, width - w:], w + new,
                                                             stop, **sub)))
            total = max(width - w + out.shape[1] for _, w, out in outs)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
            result = torch.full((batch, total), pad, dtype=context.dtype, device=context.device)
            for rows, w, out in outs:
                result[rows, :width] = context[rows]
                result[rows, width:width - w + out.shape[1]] = out[:, w:]
            return result

        def _generate_metered(self, context, max_length, stop, **generation_kwargs):
            batch, prompt = context.shape
            with _DecodeCounter(self.model, self._meter, self._shape) if self._count else contextlib.nullcontext():
                out = self._generate_call(context, max_length, stop, **generation_kwargs)
            new = out.shape[1] - prompt
            self._meter.add(flops_analytic=self._shape.generate(batch, prompt, new),
                            tokens=batch * (prompt + max(new - 1, 0)))
            details = self._meter.cost.details
            details["prompt_tokens"] = details.get("prompt_tokens", 0) + batch * prompt
            details["generated_tokens"] = details.get("generated_tokens", 0) + batch * new
            details["generate_calls"] = details.get("generate_calls", 0) + 1
            return out

        def _generate_call(self, context, max_length, stop, **generation_kwargs):
            """lm-eval's `generate` call (greedy unless a temperature is given, as lm-eval decides), with the stop
            check of `stop_strings_criterion` instead of lm-eval's (which decodes every row's last tokens on the
            host at every step, once per stop string, and ends the batch only when one string has stopped
            every row). Each row now finishes on its own when any stop string appears in its output; lm-eval
            cuts every output at the first stop string, so the texts are the same and fewer tokens are
            generated."""
            import transformers

            kwargs = dict(generation_kwargs)
            temperature = kwargs.setdefault("temperature", 0.0)
            if temperature == 0.0 and kwargs.get("do_sample") is None:
                kwargs["do_sample"] = False
            if kwargs.get("do_sample") is False and temperature == 0.0:
                kwargs.pop("temperature")
            criteria = transformers.StoppingCriteriaList(
                [stop_strings_criterion(self.tokenizer, stop, context.shape[1])] if stop else [])
            with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                enabled=self.mixed_precision_dtype is not None):
                return self.model.generate(input_ids=context, max_length=max_length, stopping_criteria=criteria,
                                           pad_token_id=self.tokenizer.pad_token_id, use_cache=True, **kwargs)

    return MeteredHFLM


_STOP_TABLES: dict = {}  # (id(tokenizer), stop strings) -> (tokenizer, its StopStringCriteria): ~1 s to build


def stop_strings_criterion(tokenizer, stops: list[str], prompt_width: int):
    """A `generate` stopping criterion, per row: has any of `stops` appeared in the tokens generated after the
    first `prompt_width` positions? transformers' StopStringCriteria matches on the device against a table
    of which tokens can end or continue each string (built once per tokenizer and strings, and kept), so no
    token is copied to the host or decoded; applied to the generated tokens only, a string that straddles the
    prompt's end does not count, as in lm-eval's check."""
    from transformers import StoppingCriteria, StopStringCriteria

    key = (id(tokenizer), tuple(stops))
    if key not in _STOP_TABLES:  # the tokenizer is kept with its table, so its id cannot be reused meanwhile
        if len(_STOP_TABLES) >= 16:
            _STOP_TABLES.pop(next(iter(_STOP_TABLES)))
        _STOP_TABLES[key] = (tokenizer, StopStringCriteria(tokenizer, list(stops)))
    inner = _STOP_TABLES[key][1]

    class GeneratedStopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return inner(input_ids[:, prompt_width:], scores)

    return GeneratedStopStrings()


GENERATION_PADDING_SLACK = 1.0  # a generation batch is split where its padded prompt positions would exceed 2x the real


def generation_groups(lengths: list[int], slack: float = GENERATION_PADDING_SLACK) -> list[list[int]]:
    """Rows of one generation batch (prompt `lengths`), grouped longest first so that each group's padded
    prompt positions stay within (1 + slack) x its real ones. Decoding reads the weights once per step for
    a whole group, so groups are split only where padding would at least double a group's prompt work
    (MBPP's prompt with a 2,000-token test literal, beside prompts of 200)."""
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    groups: list[list[int]] = []
    for r in order:
        group = groups[-1] if groups else None
        if group and padding_within([lengths[g] for g in group] + [lengths[r]], slack):
            group.append(r)
        else:
            groups.append([r])
    return groups


class _DecodeCounter:
    """Measured FLOPs of one `generate` call without counting every decoding step live.

    Counting each step under FlopCounterMode slows CPU generation about 35-fold. The prefill and
    the first decoding step are counted live; every later step costs what the first one measured
    plus the analytic growth of attention over the longer cache (the only term that changes), so
    the total stays a measurement of the kernels that ran, not a 2·N estimate.
    """

    def __init__(self, model, meter: PhaseMeter, shape: ModelShape) -> None:
        self.module = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.meter, self.shape = meter, shape
        self.first_step: tuple[int, int] | None = None  # (measured FLOPs, cache length) of step one
        self.live = None
        self.handles = []

    def __enter__(self):
        self.handles = [self.module.register_forward_pre_hook(self._before, with_kwargs=True),
                        self.module.register_forward_hook(self._after, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        if self.live is not None:  # an exception inside a counted step
            self.live[0].__exit__(None, None, None)
            self.live = None

    def _before(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        positions = kwargs.get("cache_position")
        batch, q = ids.shape
        cache = int(positions[-1]) + 1 if positions is not None else q
        if q > 1 or self.first_step is None:  # prefill, or the first decoding step: count live
            counter = self.meter.tally.count()
            counter.__enter__()
            self.live = (counter, q, cache)
        else:
            flops, cache_then = self.first_step
            growth = self.shape.attention_forward(batch, 1, cache) - self.shape.attention_forward(batch, 1, cache_then)
            self.meter.tally.total += flops + growth
            self.meter.tally.reused += 1

    def _after(self, module, args, kwargs, output):
        if self.live is None:
            return
        counter, q, cache = self.live
        before = self.meter.tally.total
        counter.__exit__(None, None, None)
        self.live = None
        if q == 1 and self.first_step is None:
            self.first_step = (self.meter.tally.total - before, cache)


def _escape_template(text: str) -> str:
    # lm-eval renders `description` as a Jinja template against each doc: keep the prefix literal.
    return "{% raw %}" + text + "{% endraw %}" if text else text


def _chat_template(tokenizer, history: list[dict], add_generation_prompt: bool = True) -> str:
    """How lm-eval's HF model renders a chat (HFLM.apply_chat_template)."""
    return tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         continue_final_message=not add_generation_prompt)


def render_requests(task: TaskHandle, doc: dict, prefix: str | None) -> list:
    """lm-eval's requests for one document with `prefix` in the description, rendered as evaluation renders
    them (through the chat template when the task uses it): what a query costs is priced on these."""
    import functools

    t = task.task
    chat = task.chat_tokenizer is not None
    template = functools.partial(_chat_template, task.chat_tokenizer) if chat else None
    saved = t.config.description
    t.set_config(key="description", value=_escape_template(prefix or ""))
    try:
        context = t.fewshot_context(doc, int(t.config.num_fewshot or 0), apply_chat_template=chat,
                                    chat_template=template, gen_prefix=t.doc_to_prefix(doc))
        requests = t.construct_requests(doc=doc, ctx=context, metadata=(task.lm_eval_name, 0, t.config.repeats),
                                        apply_chat_template=chat, chat_template=template)
    finally:
        t.set_config(key="description", value=saved)
    return requests if isinstance(requests, list) else [requests]


def engine_scorer(engine_cfg) -> str:
    """The log-likelihood scorer the engine config names (configs/engine/hf.yaml); lm-eval's path without one."""
    scorer = engine_cfg.get("scorer", "lm_eval") if engine_cfg is not None else "lm_eval"
    if engine_cfg is not None and engine_cfg.get("name") == "vllm":
        return "lm_eval"  # vLLM scores through lm-eval's own VLLM class
    if scorer not in SCORERS:
        raise HarnessError(f"engine.scorer must be one of {', '.join(SCORERS)} (got {scorer!r}): pass one of them")
    return scorer


def engine_memory(engine_cfg) -> int | None:
    """engine.memory_gib as bytes: the cap scoring batches are planned under (None: `auto`, measured when scoring)."""
    value = engine_cfg.get("memory_gib", "auto") if engine_cfg is not None else "auto"
    if value in ("auto", None):
        return None
    try:
        gib = float(value)
    except (TypeError, ValueError):
        gib = float("nan")
    if not gib > 0:
        raise HarnessError(f"engine.memory_gib must be a positive number of GiB or auto (got {value!r}): pass e.g. "
                           "engine.memory_gib=8")
    return int(gib * 2**30)


def attach_adapter(model, adapter_dir: str | Path):
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file() and not (path / ARROW).is_file():
        raise HarnessError(f"adapter directory {path} has no adapter_config.json: point to a peft adapter folder")
    problem = adapter_problem(path)
    if problem:
        raise HarnessError(f"adapter {path} cannot be loaded: {problem}: save or copy it again, complete")
    routing = arrow_routing(path)
    try:
        if routing is not None:  # peft's Arrow: per-token routing over the expert LoRAs, train-free
            from peft import ArrowConfig, create_arrow_model

            config = ArrowConfig(top_k=int(routing["top_k"]), router_temperature=float(routing["router_temperature"]),
                                 rng_seed=routing.get("rng_seed"))
            return create_arrow_model(model, [str(path / e) for e in routing["experts"]], config).eval()
        return PeftModel.from_pretrained(model, str(path), is_trainable=False).eval()
    except (ValueError, KeyError, RuntimeError) as exc:  # e.g. an adapter made for another architecture
        raise HarnessError(f"peft cannot put adapter {path} on this model ({first_line(exc)}): pass an adapter "
                           "trained for this model") from None


def evaluate_adaptation(model, tokenizer, task: TaskHandle, adaptation, indices: list[int], batch_size: int,
                        device: torch.device, count_flops: bool = True, engine_cfg=None,
                        model_dir: str | None = None, seed: int = 0) -> EvalResult:
    """Score an adaptation with lm-eval. `engine_cfg.name == "vllm"` serves it from the process's
    cached vLLM engine (harness/engines), the base model at `model_dir`; otherwise transformers.

    Every generator evaluation can draw from is seeded from `seed` right before scoring (sampled
    generations then repeat exactly, whatever adaptation did to the generators before): Python's,
    numpy's, torch's, lm-eval's few-shot sampler, and vLLM's per-request sampling seeds."""
    import lm_eval

    quiet_lm_eval()
    use_vllm = engine_cfg is not None and engine_cfg.get("name") == "vllm"
    lm_model = model
    if adaptation.kind == "adapter" and not use_vllm:
        lm_model = attach_adapter(model, adaptation.adapter_dir)
    task.task.set_config(key="description", value=_escape_template(adaptation.prefix or ""))
    meter = PhaseMeter("inference", device)
    if use_vllm:
        from harness.engines.vllm_engine import make_lm

        if not model_dir:
            raise HarnessError("engine=vllm needs the model as a folder or Hub id; this model has neither")
        if adaptation.kind == "adapter" and arrow_routing(adaptation.adapter_dir) is not None:
            raise HarnessError("engine=vllm cannot serve Arrow routing (per-token mixing of several LoRAs): use "
                               "engine=hf")
        count_flops = False  # vLLM's kernels are invisible to FlopCounterMode: analytic FLOPs only
        lm = make_lm(model_dir, adapter_dir=adaptation.adapter_dir if adaptation.kind == "adapter" else None,
                     engine_cfg=engine_cfg, meter=meter, shape=ModelShape.of(model), tokenizer=tokenizer,
                     seed=seed)
    elif task.multimodal:  # lm-eval's multimodal HF model, with the processor's images (harness/evaluate_vision.py)
        from harness.evaluate_vision import metered_vlm_class

        if task.processor is None:
            raise HarnessError(f"task {task.name} shows images: evaluate it on a vision-language model")
        lm = metered_vlm_class()(pretrained=lm_model, tokenizer=task.processor, batch_size=batch_size, meter=meter,
                                 shape=ModelShape.of(lm_model), count_flops=count_flops, backend="causal")
    else:
        scorer, memory = engine_scorer(engine_cfg), engine_memory(engine_cfg)
        # An ICL prompt's demonstrations are encoded once per evaluation by the shared-context scorer.
        lm = metered_lm_class()(pretrained=lm_model, tokenizer=tokenizer, batch_size=batch_size, meter=meter,
                                shape=ModelShape.of(lm_model), count_flops=count_flops, scorer=scorer,
                                cache_prefix=bool(adaptation.prefix), memory_bytes=memory,
                                **({"backend": "causal"} if is_vision_model(lm_model) else {}))
    chat = task.chat_tokenizer is not None
    GRADES.clear()
    from transformers import set_seed

    set_seed(seed)  # Python's, numpy's and torch's generators, every device
    task.task.set_fewshot_seed(seed=seed)
    try:
        with meter:
            # Code tasks are marked unsafe in lm-eval: their programs run in harness/sandbox.
            out = lm_eval.evaluate(lm=lm, task_dict={task.lm_eval_name: task.task},
                                   samples={task.lm_eval_name: list(indices)}, log_samples=True,
                                   bootstrap_iters=1000, verbosity="ERROR", apply_chat_template=chat,
                                   confirm_run_unsafe_code=bool(task.task.config.unsafe_code))
    finally:
        task.task.set_config(key="description", value="")
        if adaptation.kind == "adapter" and not use_vllm:
            lm_model.unload()
    res = out["results"][task.lm_eval_name]
    metrics = {}
    for key, value in res.items():
        if "," not in key:
            continue
        name, _filter = key.split(",", 1)
        metrics[name] = value
    samples = out["samples"][task.lm_eval_name]
    for sample in samples:  # why each code sample failed (timeout, memory, wrong answer ...)
        grades = GRADES.take(sample["doc"])
        if grades is not None:
            sample["grades"] = grades
    for name in [m for m in metrics if m.endswith("_stderr")]:  # lm-eval writes "N/A" when n < 2
        if not isinstance(metrics[name], (int, float)):
            metrics[name] = float("nan")
    n = len(samples)
    cost = meter.cost
    # An ICL prefix's cache is computed once per evaluation, not once per query: kept apart, so that the
    # horizon's total counts it once (harness/runner.py `at_horizon`)
    once = cost.details.get("prefix_pass") or {}
    per_query = {f: (getattr(cost, f) - once.get(f, 0)) / max(n, 1)
                 for f in ("flops_measured", "flops_analytic", "tokens", "wall_s")}
    if once:
        per_query["once_per_evaluation"] = {**once, "what": "the ICL prefix, encoded once into the cache queries read"}
    cost.details.update(queries=n, batch_size=batch_size, flops_counted=count_flops, chat_template=chat,
                        engine=engine_cfg.get("name", "hf") if engine_cfg is not None else "hf")
    if not use_vllm:
        cost.details["scorer"] = lm._scorer
    if "generated_tokens" in cost.details:
        per_query["generated_tokens"] = cost.details["generated_tokens"] / max(n * _repeats(task), 1)
    for key in ("image_tokens", "vision_flops_analytic"):  # part of `tokens` and of the FLOPs, shown apart
        if key in cost.details:
            per_query[key] = cost.details[key] / max(n, 1)
    return EvalResult(metrics, samples, cost, n, per_query,
                      {"n-samples": out.get("n-samples", {}).get(task.lm_eval_name),
                       "task_config": _jsonable(out.get("configs", {}).get(task.lm_eval_name, {}))})


def _repeats(task: TaskHandle) -> int:
    return int(task.task.config.repeats or 1)


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj, default=str))
