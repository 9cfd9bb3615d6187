"""Shared-context scoring (harness/scoring.py) returns what lm-eval's own HFLM path returns.

The reference is lm-eval's unmodified per-pair path (engine.scorer=lm_eval) on the same model, items and
batch size: log likelihoods within 1e-4 per request in fp32, the same is_greedy, the same acc/acc_norm
on every item.
"""
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
            assert ll_a == pytest.approx(ll_b, abs=1e-4)
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
                       budget=Budget("b", "steps", 1, 100, "amortized"),
                       settings=compose("strategy=icl", "strategy.shots=4").strategy, seed=0, workdir=tmp_path,
                       device=torch.device("cpu"), progress=False)
    adaptation = get_strategy("icl").adapt(ctx)
    assert adaptation.kind == "prefix" and adaptation.prefix.count("Question:") == 4
    ours, ref, _ = _assert_same_scores(tiny.model, tiny.tokenizer, task, adaptation, task.eval_indices(5, 3))
    # Every choice re-encodes the 4 demonstrations in lm-eval's path: sharing saves most of the work.
    assert ours.cost.flops_measured < 0.5 * ref.cost.flops_measured


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
@pytest.mark.parametrize("name", ["arc_easy", pytest.param("hellaswag", marks=pytest.mark.xfail(
    strict=True, reason="HellaSwag's long endings: one request differs by 1.07e-4 (-121.18082 vs -121.18093), over "
                        "the 1e-4 the issue asks; why the default scorer stays lm_eval")), "winogrande", "boolq"])
def test_smollm2_items_score_as_lm_eval_does(smollm2, name):
    from harness.strategy import Adaptation
    from harness.tasks import TaskHandle

    task = TaskHandle.from_cfg(compose(f"task={name}").task)
    _assert_same_scores(smollm2.model, smollm2.tokenizer, task, Adaptation(kind="none"), task.eval_indices(3, 5))
