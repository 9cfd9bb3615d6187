"""Run one cell: config → model + task + budget → strategy.adapt → evaluate → record."""
from __future__ import annotations

import datetime as dt
import json
import platform
import random
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from harness import artifacts, provenance, store
from harness.budget import Budget
from harness.config_checks import as_int
from harness.console import say
from harness.errors import HarnessError
from harness.evaluate import engine_memory, engine_scorer, evaluate_adaptation
from harness.flops import ModelShape
from harness.models import adapter_problem, load_model, resolve_device, resolve_dtype
from harness.pricing import OutputLength, QueryPricer
from harness.strategy import AdaptContext, Adaptation, Prerequisite, check_one_off, get_strategy, image_strategies
from harness.tasks import TaskHandle, shows_images
from harness.vision import VisionChat

PACKAGES = ("torch", "transformers", "peft", "lm_eval", "hydra-core", "datasets", "accelerate", "gguf", "numpy")


def versions() -> dict:
    out = {"python": platform.python_version(), "harness": _version("customization-harness")}
    for name in PACKAGES:
        out[name] = _version(name)
    return out


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def run_cell(cfg) -> Path:
    """Run (or skip, if already finished) the cell `cfg` describes; return its folder."""
    config = OmegaConf.to_container(cfg, resolve=True)

    # Everything that can be checked without compute is checked first.
    runs_dir = Path(config["runs_dir"])
    store.check_writable(runs_dir)
    strategy = checked_strategy(cfg)
    vision = cfg.model.get("modality", "text") == "vision"
    config["seed"] = as_int(cfg.seed, "seed")
    if config["seed"] != 0 and not strategy.uses_seed(cfg.strategy):
        # The seed changes nothing this strategy computes: every seed is the seed-0 cell, run once.
        say(f"{config['strategy']['name']} does not use the seed: seed {config['seed']} is the seed-0 cell")
        config["seed"] = 0
    label = f"{config['model']['name']} / {config['task']['name']} / {config['strategy']['name']} / " \
            f"{config['budget']['name']} / seed {config['seed']}"
    budget = Budget.from_cfg(cfg.budget)
    device = resolve_device(cfg.engine.device)
    dtype = resolve_dtype(cfg.engine.dtype, device)
    limit = as_int(cfg.eval.limit, "eval.limit", minimum=1, allow_none=True)
    subset_seed = as_int(cfg.eval.subset_seed, "eval.subset_seed")
    seed = config["seed"]
    batch_size = as_int(cfg.engine.batch_size, "engine.batch_size", minimum=1)
    engine_scorer(cfg.engine), engine_memory(cfg.engine)  # one-line errors before any work
    if vision and cfg.engine.get("name") == "vllm":
        raise HarnessError(f"model {cfg.model.name} is a vision-language model; the vLLM engine here serves text "
                           "models only: use engine=hf")
    if cfg.engine.get("name") == "vllm":  # before any training: an adaptation nobody can score is lost work
        from harness.engines.vllm_engine import INSTALL_HINT, vllm_available

        if not vllm_available():
            raise HarnessError(f"engine=vllm: vLLM is not importable here: {INSTALL_HINT}")

    # The key covers the config and everything else the result depends on (harness/provenance.py: the
    # code, package versions, model weights; the content of the data files and of a given adapter), so a
    # finished cell is skipped only when nothing it read has changed.
    task = TaskHandle.from_cfg(cfg.task)
    inputs = {**provenance.environment(cfg.model), "data": task.pool_info.fingerprints,
              **provenance.strategy_inputs(strategy, cfg)}
    output = output_length(config, task)  # prices generation, so it is an input: a new base cell, a new key
    if output is not None:
        inputs["output_length"] = {"tokens": output.tokens, "source": output.source}
    key = store.cell_key({**config, "inputs": inputs})
    folder = store.cell_dir(runs_dir, config, key)
    if store.read_record(folder, key) is not None:
        say(f"skip (finished): {label}")
        return folder
    # One builder per cell (harness/artifacts.py): a second `harness run` of the same cell waits for the first and
    # skips it; a .partial folder left by a killed run is taken over with its saved adaptation.
    with artifacts.building(folder, f"the cell {label}", say, keep=True, root=runs_dir) as build:
        if store.read_record(folder, key) is not None:
            say(f"skip (finished by another process meanwhile): {label}")
            return folder
        _, problem = store.load_record(folder)
        if problem:
            say(f"the record {folder / store.RECORD} is not a finished record ({problem}): running the cell again")
        for older in store.superseded(runs_dir, config, key):
            changed = provenance.changes((store.read_record(older) or {}).get("inputs"), inputs) or ["sweep order"]
            say(f"the finished record at {older} was made with other inputs ({'; '.join(changed)}): kept, not reused; "
                "`harness runs stale` lists such records")

        say(f"run: {label}")
        indices = task.eval_indices(limit, subset_seed)
        loaded, pricing = _load(cfg, task, device, dtype, output)

        work = build.work
        created = not work.exists()
        try:
            build.start()
            adaptation = _load_adaptation(work, key)
            if adaptation is not None:
                say("reusing the adaptation saved by an earlier, interrupted run")
            else:
                import torch

                torch.manual_seed(seed)
                ctx = AdaptContext(model=loaded.model, tokenizer=loaded.tokenizer, task=task, budget=budget,
                                   settings=cfg.strategy, seed=seed, workdir=work, device=device,
                                   progress=bool(cfg.progress), model_name=config["model"]["name"],
                                   model_cfg=config["model"], pricing=pricing,
                                   shared_dir=runs_dir / config["model"]["name"] / "_shared")
                adaptation = strategy.adapt(ctx)
                check_one_off(strategy, cfg.strategy, adaptation)
                store.write_json_atomic(work / store.ADAPTATION, {"key": key, "adaptation": adaptation.to_dict()})

            result = evaluate_adaptation(loaded.model, loaded.tokenizer, task, adaptation, indices, batch_size, device,
                                         count_flops=bool(cfg.engine.count_flops), engine_cfg=cfg.engine,
                                         model_dir=loaded.info.get("cache") or loaded.info.get("hub_id"), seed=seed)
            cached = budget.icl_pricing == "cached"
            result.per_query["predicted"] = {"flops_analytic": pricing.flops(adaptation.prefix, adaptation.lora_params,
                                                                             cached=cached),
                                             "queries_priced": len(pricing.docs), "priced_on": pricing.source,
                                             **pricing.describe()}
            settle_budget(adaptation, budget, pricing, task.eval_docs, indices, result.per_query)
            record = _record(config, key, loaded.info, task, indices, adaptation, result, limit)
            record["inputs"] = inputs
            record["adaptation"] = _relocate(record["adaptation"], str(work), str(folder))  # name published paths
            store.write_jsonl_atomic(work / store.SAMPLES, result.samples)
            store.write_json_atomic(work / store.RECORD, record)
            build.publish()  # in one rename; a stale folder of an older run is replaced
        except Exception as exc:
            # A run that ends in a one-line error leaves nothing behind; an interrupted one (a kill, a bug) keeps the
            # .partial folder, whose saved adaptation the next run reuses.
            full = None if isinstance(exc, HarnessError) else store.write_problem(exc, work)
            if created and (full or isinstance(exc, HarnessError)):
                store.remove_partial(work, runs_dir)
            if full:
                raise HarnessError(f"cannot write the cell's files under {work.parent} ({full}): free space there, or "
                                   f"{store.RUNS_FIX}") from None
            raise
    metric = str(cfg.task.get("metric") or "acc")
    value, err = result.metrics.get(metric, float("nan")), result.metrics.get(f"{metric}_stderr", float("nan"))
    say(f"done: {label}: {metric}={value:.4f} ± {err:.4f} (n={result.n})")
    return folder


def checked_strategy(cfg):
    """The cell's strategy, once its settings and the cell itself pass the checks that need no compute."""
    strategy = get_strategy(cfg.strategy.impl)
    strategy.validate(cfg.strategy)
    if shows_images(cfg.task):
        if cfg.model.get("modality", "text") != "vision":
            raise HarnessError(f"task {cfg.task.name} shows an image with every item; model {cfg.model.name} is "
                               "text-only: use a vision-language model (model=tiny-random-vlm offline; qwen2.5-vl-3b, "
                               "smolvlm-256m ...)")
        if not strategy.adapts_images(cfg.strategy):
            raise HarnessError(f"strategy {cfg.strategy.name} does not adapt on tasks with images (task "
                               f"{cfg.task.name}): use one of {', '.join(image_strategies())}")
    strategy.validate_cell(cfg)
    return strategy


def _load(cfg, task: TaskHandle, device, dtype, output: OutputLength | None):
    """(the loaded model, the query pricer) for a cell; the task learns the model's chat template and processor."""
    loaded = load_model(cfg.model, device, dtype)
    chat = loaded.tokenizer
    if loaded.processor is not None:  # prompts with images: the processor's chat template and image tokens
        task.use_processor(loaded.processor)
        chat = VisionChat(loaded.processor)
    if use_chat_template(cfg, task, chat):
        task.use_chat(chat)
    return loaded, QueryPricer(task, loaded.tokenizer, ModelShape.of(loaded.model), output,
                               scorer=engine_scorer(cfg.engine))


def prepare_cell(cfg, need: Prerequisite) -> None:
    """Build one shared artifact the cell `cfg` needs before it adapts (Strategy.prerequisites, reused when it is
    built already): a job of one phase of a sweep that a launcher runs in dependency order. Writes no record."""
    config = OmegaConf.to_container(cfg, resolve=True)
    runs_dir = Path(config["runs_dir"])
    store.check_writable(runs_dir)
    strategy = checked_strategy(cfg)
    budget = Budget.from_cfg(cfg.budget)
    device = resolve_device(cfg.engine.device)
    dtype = resolve_dtype(cfg.engine.dtype, device)
    seed = as_int(cfg.seed, "seed")
    task = TaskHandle.from_cfg(cfg.task)
    what = need.phase + (f" {need.item}" if need.item else "")
    say(f"prepare ({what}): {config['model']['name']} / {config['task']['name']} / {config['strategy']['name']}")
    loaded, pricing = _load(cfg, task, device, dtype, output_length(config, task))
    import tempfile

    import torch

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="harness-prepare-") as work:
        ctx = AdaptContext(model=loaded.model, tokenizer=loaded.tokenizer, task=task, budget=budget,
                           settings=cfg.strategy, seed=seed, workdir=Path(work), device=device,
                           progress=bool(cfg.progress), model_name=config["model"]["name"], model_cfg=config["model"],
                           pricing=pricing, shared_dir=runs_dir / config["model"]["name"] / "_shared")
        strategy.prepare(ctx, need)


def use_chat_template(cfg, task: TaskHandle, tokenizer) -> bool:
    """Generation tasks go through the chat template of instruct models (engine.chat_template: auto).

    Log-likelihood tasks never do: their scores stay comparable with lm-eval's defaults.
    """
    mode = cfg.engine.get("chat_template", "auto")
    if mode not in ("auto", True, False):
        raise HarnessError(f"engine.chat_template must be auto, true or false (got {mode!r})")
    if not task.generative or mode is False:
        return False
    if mode == "auto":
        return bool(cfg.model.get("instruct")) and bool(getattr(tokenizer, "chat_template", None))
    return True


def output_length(config: dict, task: TaskHandle) -> OutputLength | None:
    """Generated tokens per query to price generation with: the base model's measured mean on this task
    (a finished cell of the unadapted model with the same model, task and engine settings, other than this
    cell's own variant), else None (the pricer then takes the task's max_gen_toks, the worst case)."""
    if not task.generative:
        return None
    folder = Path(config["runs_dir"]) / config["model"]["name"] / config["task"]["name"]
    mine = store.variant_key(config)
    for path in sorted(folder.glob("*/" + store.RECORD), key=lambda p: p.stat().st_mtime, reverse=True):
        if path.parent.name.endswith(".partial"):
            continue
        record = store.read_record(path.parent)
        if not record or record.get("adaptation", {}).get("kind") != "none":
            continue
        other = record.get("config", {})
        if store.variant_key(other) == mine:  # a cell never prices itself from its own (or its seeds') output
            continue
        same = all(other.get(k) == config[k] for k in ("model", "task")) and \
            other.get("engine", {}).get("chat_template") == config["engine"].get("chat_template")
        tokens = record.get("per_query", {}).get("generated_tokens")
        if same and tokens:
            return OutputLength(float(tokens), f"measured: {path.parent.name}")
    return None


def settle_budget(adaptation: Adaptation, budget: Budget, pricing: QueryPricer, eval_docs: list[dict],
                  indices: list[int], per_query: dict, max_docs: int = 256) -> None:
    """After evaluation: price what the adaptation added to the evaluated queries (`indices` into `eval_docs`),
    with their measured output length, and say whether the spend, so re-priced, exceeds the budget."""
    use = adaptation.budget
    if use is None:
        return
    if len(indices) > max_docs:  # a seeded sample of the evaluated items prices them as well
        indices = sorted(random.Random(0).sample(list(indices), max_docs))
    docs = [eval_docs[i] for i in indices]
    generated = per_query.get("generated_tokens")
    cached = budget.icl_pricing == "cached"
    actual = pricing.extra(adaptation.prefix, adaptation.lora_params, generated, docs, cached=cached)
    parts = dict(use.parts) or {"own": use.spent, "queries": 0.0, "one_off": 0.0}
    # FLOPs are re-priced; other kinds keep what the strategy booked for the queries (ICL's timed prefixes)
    queries = budget.horizon * actual if budget.kind == "flops" else parts.get("queries", 0.0)
    spent = parts.get("own", 0.0) + parts.get("one_off", 0.0) + queries
    use.after_eval = {"per_query_extra_predicted": adaptation.per_query_extra_flops,
                      "per_query_extra_on_eval_items": actual, "eval_items_priced": len(docs),
                      "queries": queries, "spent": spent, "gen_tokens_measured": generated, **pricing.describe()}
    if adaptation.prefix:  # both prices of the demonstrations on the evaluated items, whichever the budget charges
        use.after_eval["icl_prices"] = pricing.icl_prices(adaptation.prefix, budget.horizon, docs)
    use.overspent = max(0.0, spent - budget.amount)


def _load_adaptation(work: Path, key: str) -> Adaptation | None:
    path = work / store.ADAPTATION
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    if data.get("key") != key:
        return None
    adaptation = Adaptation.from_dict(data["adaptation"])
    if adaptation.kind == "adapter" and adapter_problem(adaptation.adapter_dir):
        return None  # damaged since it was saved: adapt again
    return adaptation


def _relocate(obj, old: str, new: str):
    if isinstance(obj, str):
        return new + obj[len(old):] if obj == old or obj.startswith(old + "/") else obj
    if isinstance(obj, list):
        return [_relocate(v, old, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _relocate(v, old, new) for k, v in obj.items()}
    return obj


def _record(config, key, model_info, task: TaskHandle, indices, adaptation: Adaptation, result, limit) -> dict:
    costs = [c.to_dict() for c in adaptation.costs] + [result.cost.to_dict()]
    # Phases this target paid alone, and one-off phases (a generator's library and training) that
    # `shared_by` targets share: recorded whole, amortized over the declared targets, and as the budget's
    # `one_off` policy charges them; the report recounts the targets that actually used them.
    own = [c for c in adaptation.costs if not c.shared_by]
    shared = [c for c in adaptation.costs if c.shared_by]
    fields = ("wall_s", "flops_measured", "flops_analytic")
    policy = config["budget"]["one_off"]
    adapt_cost = {f: sum(getattr(c, f) for c in own) for f in fields}
    adapt_cost["one_off"] = {f: sum(getattr(c, f) for c in shared) for f in fields}
    adapt_cost["one_off_amortized"] = {f: sum(getattr(c, f) / c.shared_by for c in shared) for f in fields}
    adapt_cost["one_off_policy"] = policy
    adapt_cost["one_off_charged"] = {"amortized": adapt_cost["one_off_amortized"], "whole": adapt_cost["one_off"],
                                     "excluded": dict.fromkeys(fields, 0.0)}[policy]
    horizon = int(config["budget"]["horizon"])
    once = result.per_query.get("once_per_evaluation") or {}
    metrics = dict(result.metrics)
    metrics["n"] = result.n
    return {
        "schema": store.SCHEMA,
        "key": key,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cell": {"model": config["model"]["name"], "task": config["task"]["name"],
                 "strategy": config["strategy"]["name"], "budget": config["budget"]["name"], "seed": config["seed"]},
        "config": config,
        "versions": versions(),
        "code": provenance.code_fingerprint(),
        "model": model_info,
        "data": {"pool": task.pool_info.to_dict(), "lm_eval_task": task.lm_eval_name, "variant": task.data_variant,
                 "split_size": task.split_size},
        "seeds": {"seed": config["seed"], "eval_subset_seed": config["eval"]["subset_seed"]},
        "eval": {"limit": limit, "subset": "seeded" if limit else "all", "n": result.n,
                 "n_eval_split": len(task.eval_docs), "doc_ids": indices, **result.lm_eval_config},
        "metrics": metrics,
        "adaptation": adaptation.to_dict(),
        "costs": costs,
        "adaptation_cost": adapt_cost,
        "per_query": result.per_query,
        # adaptation + its one-off share (by the budget's policy, declared targets) + horizon × per query
        # (+ what evaluation computes once, whatever the number of queries: an ICL prefix's cache)
        "at_horizon": {"horizon": horizon, "one_off": policy,
                       **{f: adapt_cost[f] + adapt_cost["one_off_charged"][f] + once.get(f, 0.0)
                          + horizon * result.per_query[f] for f in ("flops_measured", "flops_analytic")}},
        "samples_file": store.SAMPLES,
    }
