"""Shared-context scoring (harness/scoring.py) returns what lm-eval's own HFLM path returns.

The reference is lm-eval's unmodified per-pair path (engine.scorer=lm_eval) on the same model, items and
batch size: log likelihoods within 1e-4 per request in fp32, the same is_greedy, the same acc/acc_norm
on every item. Tolerance: 1e-4 absolute, or 1e-6 relative for the long continuations whose summed
log-probability reaches a few hundred nats (there a float32 sum moves by 3e-5 per unit in the last place,
and lm-eval's own path differs by 6.1e-5 between batch sizes 1 and 4 on the HellaSwag items below).
"""
import json
from pathlib import Path

import pytest
import torch

from conftest import compose, needs_data

pytestmark = needs_data

COMMONSENSE = ["arc_easy", "arc_challenge", "boolq", "openbookqa", "piqa", "hellaswag", "winogrande"]


def _evaluate(model, tokenizer, task, adaptation, indices, scorer, batch_size=4):
    from omegaconf import OmegaConf

    from harness.evaluate import evaluate_adaptation

    engine = OmegaConf.create({"name": "hf", "scorer": scorer})
    return evaluate_adaptation(model, tokenizer, task, adaptation, indices, batch_size, torch.device("cpu"),
                               engine_cfg=engine)


def _assert_same_scores(model, tokenizer, task, adaptation, indices, batch_size=4):
    ours = _evaluate(model, tokenizer, task, adaptation, indices, "shared_context", batch_size)
    ref = _evaluate(model, tokenizer, task, adaptation, indices, "lm_eval", batch_size)
    assert ours.cost.details["scorer"] == "shared_context" and ref.cost.details["scorer"] == "lm_eval"
    assert [s["doc_id"] for s in ours.samples] == [s["doc_id"] for s in ref.samples]
    requests = 0
    for a, b in zip(ours.samples, ref.samples, strict=True):
        assert len(a["resps"]) == len(b["resps"]) >= 2
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip((r[0] for r in a["resps"]), (r[0] for r in b["resps"])):
            assert ll_a == pytest.approx(ll_b, abs=1e-4, rel=1e-6)
            assert greedy_a == greedy_b
            requests += 1
        assert (a["acc"], a.get("acc_norm")) == (b["acc"], b.get("acc_norm"))
    assert ours.metrics["acc"] == ref.metrics["acc"]
    # Fewer FLOPs were computed, and what was measured is what the formula says was computed.
    assert ours.cost.flops_measured < ref.cost.flops_measured
    assert ours.cost.flops_measured == pytest.approx(ours.cost.flops_analytic, rel=0.05)
    return ours, ref, requests


@pytest.mark.parametrize("name", COMMONSENSE)
def test_every_commonsense_task_scores_as_lm_eval_does_on_tiny_random(tiny, name):
    from harness.strategy import Adaptation
    from harness.tasks import TaskHandle

    task = TaskHandle.from_cfg(compose(f"task={name}").task)
    _, _, requests = _assert_same_scores(tiny.model, tiny.tokenizer, task, Adaptation(kind="none"),
                                         task.eval_indices(6, 7))
    assert requests >= 12


def test_an_icl_prefix_scores_as_lm_eval_does(tiny, tmp_path):
    from harness.budget import Budget
    from harness.strategy import AdaptContext, get_strategy
    from harness.tasks import TaskHandle

    task = TaskHandle.from_cfg(compose("task=arc_challenge").task)
    ctx = AdaptContext(model=tiny.model, tokenizer=tiny.tokenizer, task=task,
                       budget=Budget("b", "steps", 1, 100, "amortized", "cached"),
                       settings=compose("strategy=icl", "strategy.shots=4").strategy, seed=0, workdir=tmp_path,
                       device=torch.device("cpu"), progress=False)
    adaptation = get_strategy("icl").adapt(ctx)
    assert adaptation.kind == "prefix" and adaptation.prefix.count("Question:") == 4
    ours, ref, _ = _assert_same_scores(tiny.model, tiny.tokenizer, task, adaptation, task.eval_indices(5, 3))
    # Every choice re-encodes the 4 demonstrations in lm-eval's path: here they were encoded once.
    assert ours.cost.flops_measured < 0.25 * ref.cost.flops_measured
    prefix_tokens = len(tiny.tokenizer(adaptation.prefix, add_special_tokens=False)["input_ids"])
    once = ours.per_query["once_per_evaluation"]
    # the demonstrations (a boundary token aside), and the "Question:" every query starts with
    assert prefix_tokens - 1 <= once["tokens"] == ours.cost.details["prefix_cached_tokens"] <= prefix_tokens + 4
    assert once["flops_measured"] == pytest.approx(once["flops_analytic"], rel=0.05)


def test_a_lora_adapter_attached_scores_as_lm_eval_does(tiny, fresh_tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    from harness.strategy import Adaptation
    from harness.tasks import TaskHandle

    torch.manual_seed(0)  # init_lora_weights=False: B is random too, so the adapter changes the scores
    peft_model = get_peft_model(fresh_tiny.model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                             target_modules=["q_proj", "v_proj", "down_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    task = TaskHandle.from_cfg(compose("task=hellaswag").task)
    indices = task.eval_indices(5, 11)
    adapted, _, _ = _assert_same_scores(tiny.model, tiny.tokenizer, task,
                                        Adaptation(kind="adapter", adapter_dir=str(tmp_path / "adapter")), indices)
    base = _evaluate(tiny.model, tiny.tokenizer, task, Adaptation(kind="none"), indices, "shared_context")
    lls = [r[0][0] for s in adapted.samples for r in s["resps"]]
    assert max(abs(a - r[0][0]) for a, r in zip(lls, (r for s in base.samples for r in s["resps"]))) > 1e-2


def test_eager_attention_takes_the_additive_mask(fresh_tiny):
    """Eager attention adds the mask to the scores: the packed rows' mask goes in as 0 / dtype-minimum there."""
    from harness.strategy import Adaptation
    from harness.tasks import TaskHandle

    fresh_tiny.model.set_attn_implementation("eager")
    assert fresh_tiny.model.config._attn_implementation == "eager"
    task = TaskHandle.from_cfg(compose("task=hellaswag").task)
    ours, _, _ = _assert_same_scores(fresh_tiny.model, fresh_tiny.tokenizer, task, Adaptation(kind="none"),
                                     task.eval_indices(5, 2))
    assert "scorer_fallback" not in ours.cost.details and ours.cost.details["scoring_rows"] == 5


def _lm(model, tokenizer, scorer, batch_size=3):
    from harness.costs import PhaseMeter
    from harness.evaluate import metered_lm_class
    from harness.flops import ModelShape

    return metered_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                              meter=PhaseMeter("inference", "cpu"), shape=ModelShape.of(model), scorer=scorer)


def test_greedy_continuations_truncation_and_one_token_contexts(tiny):
    """Requests built by hand: the model's own greedy continuation (is_greedy must be True, whatever the
    scorer), continuations of different lengths on one context, a context lm-eval truncates, one token."""
    model, tok = tiny.model, tiny.tokenizer
    context = tok.encode("The capital of France is a city called")
    greedy = model.generate(torch.tensor([context]), max_new_tokens=5, do_sample=False,
                            pad_token_id=tok.eos_token_id)[0, len(context):].tolist()
    other = tok.encode("Question: which gas do plants take in? Answer:")
    long_context = (tok.encode(" lorem ipsum dolor") * 400)[:1030]  # > max_length (1024): left-truncated
    requests = [(("a", "g"), context, greedy), (("a", "g1"), context, greedy[:1]),
                (("a", "x"), context, tok.encode(" Paris and more", add_special_tokens=False)),
                (("b", "y"), other, tok.encode(" carbon dioxide", add_special_tokens=False)),
                (("b", "z"), other, tok.encode(" oxygen", add_special_tokens=False)),
                (("c", "w"), long_context, tok.encode(" sit amet", add_special_tokens=False)),
                (("d", "v"), context[:1], greedy)]
    ours = _lm(model, tok, "shared_context")
    ref = _lm(model, tok, "lm_eval")
    assert ours.max_length == 1024
    got, want = ours._loglikelihood_tokens(requests), ref._loglikelihood_tokens(requests)
    assert got[0][1] and got[1][1] and want[0][1]
    for (ll_a, greedy_a), (ll_b, greedy_b) in zip(got, want, strict=True):
        assert ll_a == pytest.approx(ll_b, abs=1e-4)
        assert greedy_a == greedy_b
    assert got[0][0] < got[1][0] < 0  # five greedy tokens are less likely than the first alone


def test_forward_over_a_cache_is_priced_as_measured(tiny):
    """ModelShape.forward_cached against FlopCounterMode on a real cached forward (a context pass of C
    tokens, then L new tokens over C + L keys)."""
    from harness.flops import ModelShape, flop_counter

    shape, model = ModelShape.of(tiny.model), tiny.model
    ids = torch.randint(0, 1000, (3, 40))
    counter = flop_counter()
    with torch.no_grad(), counter:
        cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
    assert counter.get_total_flops() == pytest.approx(shape.forward_cached(3, 40, 0, logits=1), rel=0.05)
    counter = flop_counter()
    with torch.no_grad(), counter:
        model(input_ids=ids[:, :7], past_key_values=cache, use_cache=True)
    assert counter.get_total_flops() == pytest.approx(shape.forward_cached(3, 7, 40), rel=0.05)
    # The cached forward is the uncached one minus the context's head and its share of attention.
    assert shape.forward_cached(3, 40, 0) == shape.forward(3, 40)


@pytest.fixture(scope="module")
def smollm2():
    from harness.models import load_model

    return load_model(compose("model=smollm2-135m").model, torch.device("cpu"), torch.float32)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["arc_easy", "hellaswag", "winogrande", "boolq"])
def test_smollm2_items_score_as_lm_eval_does(smollm2, name):
    from harness.strategy import Adaptation
    from harness.tasks import TaskHandle

    task = TaskHandle.from_cfg(compose(f"task={name}").task)
    _assert_same_scores(smollm2.model, smollm2.tokenizer, task, Adaptation(kind="none"), task.eval_indices(3, 5))


def _icl_arc(tiny, tmp_path, shots):
    from harness.budget import Budget
    from harness.strategy import AdaptContext, get_strategy
    from harness.tasks import TaskHandle

    task = TaskHandle.from_cfg(compose("task=arc_challenge").task)
    ctx = AdaptContext(model=tiny.model, tokenizer=tiny.tokenizer, task=task,
                       budget=Budget("b", "steps", 1, 100, "amortized", "cached"),
                       settings=compose("strategy=icl", f"strategy.shots={shots}").strategy, seed=0,
                       workdir=tmp_path, device=torch.device("cpu"), progress=False)
    return task, get_strategy("icl").adapt(ctx)


def test_icl_prices_cached_and_recomputed_agree_with_what_each_path_measures(tiny, tmp_path):
    """The pricer's two ICL prices against FlopCounterMode on the runs they describe: `cached` against the
    shared-context scorer with its prefix cache (one prefix pass, then each query's own tokens), `recompute`
    against the same scorer re-encoding the prefix with every query, and lm-eval's path against its price."""
    from harness.costs import PhaseMeter
    from harness.flops import ModelShape
    from harness.pricing import QueryPricer

    task, adaptation = _icl_arc(tiny, tmp_path, 6)
    docs = [task.eval_docs[i] for i in task.eval_indices(6, 2)]
    requests = []
    for doc in docs:
        from harness.evaluate import render_requests

        for req in render_requests(task, doc, adaptation.prefix):
            requests.append(req)
    shape = ModelShape.of(tiny.model)

    def measured(scorer, cache_prefix):
        lm = _lm(tiny.model, tiny.tokenizer, scorer, batch_size=1)  # unpadded, as the pricer prices a query
        lm._cache_prefix, lm._memory_bytes = cache_prefix, None
        lm._meter = PhaseMeter("inference", "cpu")
        with lm._meter:
            lm.loglikelihood(requests, disable_tqdm=True)
        once = lm._meter.cost.details.get("prefix_pass", {}).get("flops_measured", 0)
        return (lm._meter.cost.flops_measured - once) / len(docs), once

    shared = QueryPricer(task, tiny.tokenizer, shape, scorer="shared_context")
    per_query, once = measured("shared_context", True)
    prices = shared.icl_prices(adaptation.prefix, horizon=100, docs=docs)
    assert prices["prefix_cached"] and once == pytest.approx(prices["prefix_pass_flops"], rel=0.05)
    assert per_query == pytest.approx(shared.flops(adaptation.prefix, docs=docs, cached=True), rel=0.05)
    recomputed, none = measured("shared_context", False)
    assert none == 0 and recomputed == pytest.approx(shared.flops(adaptation.prefix, docs=docs), rel=0.05)
    per_pair, _ = measured("lm_eval", False)
    lm_eval_pricer = QueryPricer(task, tiny.tokenizer, shape, scorer="lm_eval")
    assert per_pair == pytest.approx(lm_eval_pricer.flops(adaptation.prefix, docs=docs), rel=0.05)
    assert lm_eval_pricer.icl_prices(adaptation.prefix, 100, docs)["prefix_pass_flops"] == 0  # it keeps no cache
    # over a horizon of 100 queries the cache costs one prefix pass and a sliver of attention per query
    assert prices["cached"] == pytest.approx(prices["prefix_pass_flops"] + 100 * prices["per_query_extra_cached"])
    assert prices["recompute"] == pytest.approx(100 * prices["per_query_extra_recompute"])
    assert prices["cached"] < 0.2 * prices["recompute"]


def test_plan_batches_covers_every_row_once_within_the_cap(tiny):
    from harness.scoring import MemoryModel, plan_batches

    memory = MemoryModel(tiny.model)
    widths = [50, 400, 30, 400, 120, 90, 31, 700]
    logits = [3, 10, 4, 7, 5, 20, 3, 9]
    unlimited = plan_batches(widths, logits, 20, 3, memory, cap=10**15)
    # longest first (700, 400, 400, 120, 90, 50, 31, 30); a row joins a pass while width_max x count <= 1.2 x
    # the widths' sum: 700+400: 1400 > 1320; 400x3 = 1200 > 1104; 120x2 = 240 <= 252, x3 = 360 > 312; 50x2 = 100
    # > 97.2; 31x2 = 62 <= 73.2
    assert unlimited == [[7], [1, 3], [4, 5], [0], [6, 2]]
    for cap in (10**15, 5 * 2**20, 1):
        plans = plan_batches(widths, logits, 20, 3, memory, cap)
        assert sorted(r for batch in plans for r in batch) == list(range(len(widths)))
        for batch in plans:
            assert len(batch) <= 3
            if len(batch) > 1:  # a single row always goes, however large
                assert memory.packed_pass(len(batch), max(widths[r] for r in batch), 20,
                                          sum(logits[r] for r in batch)) <= cap
    assert len(plan_batches(widths, logits, 20, 3, memory, cap=1)) == len(widths)  # nothing fits: one by one
    # one byte less than the pass [4, 5] needs: it splits, the smaller pass [6, 2] still fits
    capped = plan_batches(widths, logits, 20, 3, memory, cap=memory.packed_pass(2, 120, 20, 25) - 1)
    assert capped == [[7], [1], [3], [4], [5], [0], [6, 2]]


def test_an_item_too_large_for_the_cap_is_split_into_rows(tiny):
    from harness.scoring import MemoryModel, split_rows

    memory = MemoryModel(tiny.model)
    conts = [150, 150, 150, 150]
    assert split_rows(20, conts, 600, memory, cap=10**15) == [[0, 1, 2, 3]]
    # room for the context and two continuations' fed tokens (2 x 149), not three
    cap = memory.packed_pass(1, 20 + 2 * 149, 600, 1 + 2 * 149)
    assert split_rows(20, conts, 600, memory, cap) == [[0, 1], [2, 3]]
    assert split_rows(20, conts, 600, memory, cap=1) == [[0], [1], [2], [3]]


def test_scoring_stays_under_its_memory_cap(tmp_path):
    """A long shared prefix with long continuations: the scorer's peak memory above its starting point, in a
    fresh process (max RSS), stays under the cap it was given, where the uncapped plan needs several times it."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import json, sys, torch
        sys.path.insert(0, "tests")
        from conftest import compose
        from harness.costs import PhaseMeter
        from harness.evaluate import metered_lm_class
        from harness.flops import ModelShape
        from harness.models import load_model
        from harness.scoring import MemoryModel, plan_batches, split_rows
        import psutil

        torch.set_num_threads(1)
        loaded = load_model(compose("model=tiny-random").model, torch.device("cpu"), torch.float32)
        cap = int(sys.argv[1])
        lm = metered_lm_class()(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=16,
                                meter=PhaseMeter("inference", "cpu"), shape=ModelShape.of(loaded.model),
                                count_flops=False, scorer="shared_context", cache_prefix=True, memory_bytes=cap)
        g = torch.Generator().manual_seed(0)
        prefix = torch.randint(5, 40000, (600,), generator=g).tolist()
        requests = []
        for q in range(12):
            context = prefix + torch.randint(5, 40000, (20,), generator=g).tolist()
            for c in range(4):
                requests.append(((None, None), context, torch.randint(5, 40000, (150,), generator=g).tolist()))
        lm._loglikelihood_tokens(requests[:4])  # warm-up: kernels and allocator
        start = psutil.Process().memory_info().rss
        with open("/proc/self/clear_refs", "w") as f:  # Linux: the peak (VmHWM) restarts from the current RSS
            f.write("5")
        lm._loglikelihood_tokens(requests)
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        memory = MemoryModel(loaded.model)
        rows = split_rows(20, [150] * 4, len(prefix), memory, cap) * 12
        widths = [20 + sum(149 for _ in row) for row in rows]
        plans = plan_batches(widths, [w - 19 for w in widths], len(prefix), 16, memory, cap)
        print(json.dumps({"used": peak - start, "passes": len(plans)}))
    """)
    env_run = lambda cap: json.loads(subprocess.run(  # noqa: E731
        [sys.executable, "-c", script, str(cap)], capture_output=True, text=True, check=True,
        cwd=str(Path(__file__).resolve().parent.parent)).stdout.strip().splitlines()[-1])
    capped = env_run(150 * 2**20)
    uncapped = env_run(2**40)
    assert uncapped["used"] > 2 * 150 * 2**20  # without a cap the batch would not fit under it
    assert capped["passes"] > uncapped["passes"]
    assert capped["used"] <= 150 * 2**20


def test_derived_counts_equal_the_counters_own(tiny):
    """Once a pass kind's FlopCounterMode totals are known as an exact linear function of its shape, the derived
    counts are the counter's: scoring the same requests counted live every time gives the same total."""
    from harness.costs import PhaseMeter

    model, tok = tiny.model, tiny.tokenizer
    g = torch.Generator().manual_seed(3)
    requests = []
    for q in range(40):  # contexts and continuations of many lengths: many distinct pass shapes
        context = torch.randint(5, 40000, (int(torch.randint(4, 60, (1,), generator=g)),), generator=g).tolist()
        for c in range(3):
            cont = torch.randint(5, 40000, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
            requests.append(((None, None), context, cont))
    totals = {}
    for live in (False, True):
        lm = _lm(model, tok, "shared_context", batch_size=2)  # 20 or more passes
        lm._meter = PhaseMeter("inference", "cpu")
        if live:  # a tally that never trusts a fit: every pass counted by FlopCounterMode
            lm._meter.tally.linear.derive = lambda kind, features: None
        with lm._meter:
            lm._loglikelihood_tokens(requests)
        totals[live] = lm._meter.cost
    assert totals[False].details["flops_derived_by_fit"] > 10 and totals[True].details["flops_derived_by_fit"] == 0
    assert totals[False].flops_measured == totals[True].flops_measured
