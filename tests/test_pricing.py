"""What a query costs: generation priced in full (decode included), predicted before evaluation and checked after."""
import json

import pytest
import torch

from conftest import compose, needs_data
from harness.flops import ModelShape

pytestmark = needs_data
MAX_NEW = 24  # tiny-random's greedy output never stops early on GSM8K's stop strings: every query runs to this


def test_closed_form_generation_equals_the_step_by_step_sum():
    shape = ModelShape(matmul_params=1_000_000, n_layers=3, n_heads=4, head_dim=16, lora_params=5_000,
                       head_params=200_000)
    for prompt, new in [(1, 1), (10, 1), (10, 2), (37, 24), (500, 256)]:
        by_step = shape.forward(1, prompt) - 2 * shape.head_params * (prompt - 1)
        for i in range(1, new):  # one token against a cache of prompt + i positions
            by_step += 2 * (shape.matmul_params + shape.lora_params) + shape.attention_forward(1, 1, prompt + i)
        assert shape.generate(1, prompt, new) == pytest.approx(by_step, rel=1e-12)


@pytest.fixture(scope="module")
def gsm8k(tiny):
    from harness.pricing import OutputLength, QueryPricer
    from harness.tasks import TaskHandle

    task = TaskHandle.from_cfg(compose("task=gsm8k", f"+task.sampling.max_gen_toks={MAX_NEW}").task)
    return task, QueryPricer(task, tiny.tokenizer, ModelShape.of(tiny.model), OutputLength(10.0, "test"))


def _prompt_tokens(task, tokenizer, docs, prefix=""):
    return [len(tokenizer(prefix + task.task.doc_to_text(d), add_special_tokens=False)["input_ids"]) for d in docs]


def test_an_unmerged_adapter_pays_for_every_generated_token(tiny, gsm8k):
    task, pricer = gsm8k
    n_lora = 123_456
    prompts = _prompt_tokens(task, tiny.tokenizer, pricer.docs)
    # 2 FLOPs per adapter weight for each prompt token (prefill) and each of the g - 1 decoding steps
    for g in (1.0, 10.0, 40.0):
        expected = sum(2 * n_lora * (p + g - 1) for p in prompts) / len(prompts)
        assert pricer.extra(lora_params=n_lora, gen_tokens=g) == pytest.approx(expected, rel=1e-9)
    assert pricer.extra(lora_params=n_lora) == pricer.extra(lora_params=n_lora, gen_tokens=10.0)  # the given length


def test_demonstrations_are_priced_in_every_decoding_step(tiny, gsm8k):
    task, pricer = gsm8k
    prefix = "Question: one plus one?\nAnswer: 2\n\n" * 3
    shape = ModelShape.of(tiny.model)
    with_prefix = _prompt_tokens(task, tiny.tokenizer, pricer.docs, prefix)
    without = _prompt_tokens(task, tiny.tokenizer, pricer.docs)
    per_position = 4 * shape.n_layers * shape.n_heads * shape.head_dim  # one query token over one cached position
    # each decoding step attends over the prefix's positions too: (g - 1) · per_position · prefix tokens
    decode = sum(per_position * (a - b) for a, b in zip(with_prefix, without)) / len(without)
    growth = pricer.extra(prefix, gen_tokens=33) - pricer.extra(prefix, gen_tokens=1)
    assert growth == pytest.approx(32 * decode, rel=1e-9)


def test_icl_on_gsm8k_predicted_per_query_flops_match_the_measured_ones(tmp_path):
    from harness.runner import run_cell

    cfg = compose("model=tiny-random", "task=gsm8k", f"+task.sampling.max_gen_toks={MAX_NEW}", "strategy=icl",
                  "strategy.shots=2", "budget=flops_1e13", "eval.limit=6", "engine.batch_size=1", "progress=false",
                  f"runs_dir={tmp_path}")
    record = json.loads((run_cell(cfg) / "record.json").read_text())
    per_query = record["per_query"]
    assert per_query["generated_tokens"] == MAX_NEW  # the forced length the prediction assumes
    predicted = per_query["predicted"]
    assert predicted["gen_tokens"] == MAX_NEW and predicted["gen_tokens_source"] == "max_gen_toks"
    assert predicted["flops_analytic"] == pytest.approx(per_query["flops_measured"], rel=0.05)
    use = record["adaptation"]["budget"]
    after = use["after_eval"]
    assert after["gen_tokens_measured"] == MAX_NEW and after["eval_items_priced"] == 6
    # re-priced on the evaluated items at the length they really had: close to the prediction, inside the budget
    assert after["per_query_extra_on_eval_items"] == pytest.approx(after["per_query_extra_predicted"], rel=0.1)
    assert after["queries"] == pytest.approx(100 * after["per_query_extra_on_eval_items"])
    assert use["overspent"] == 0 and after["spent"] < use["amount"]


def test_a_measured_base_length_prices_generation_and_a_longer_output_overspends(tiny, gsm8k, tmp_path):
    from harness.budget import Budget
    from harness.pricing import OutputLength, QueryPricer
    from harness.runner import output_length, settle_budget
    from harness.strategy import AdaptContext, get_strategy

    task, _ = gsm8k
    cfg = compose("model=tiny-random", "task=gsm8k", f"+task.sampling.max_gen_toks={MAX_NEW}", "strategy=base",
                  "eval.limit=3", "engine.batch_size=1", "progress=false", f"runs_dir={tmp_path}")
    from harness.runner import run_cell

    from omegaconf import OmegaConf

    run_cell(cfg)  # the unadapted model's measured output length becomes the expected one for other cells
    icl = OmegaConf.to_container(compose("model=tiny-random", "task=gsm8k", f"+task.sampling.max_gen_toks={MAX_NEW}",
                                         "strategy=icl", "eval.limit=3", "engine.batch_size=1",
                                         f"runs_dir={tmp_path}"), resolve=True)
    measured = output_length(icl, task)
    assert measured.tokens == MAX_NEW and measured.source.startswith("measured: base__")
    assert output_length(OmegaConf.to_container(cfg, resolve=True), task) is None  # never its own output
    pricer = QueryPricer(task, tiny.tokenizer, ModelShape.of(tiny.model), OutputLength(4.0, "assumed short"))
    demos = task.sample_pool(8, 0)  # what the ICL cell below draws (seed 0), rendered as its prefix
    three = "".join(p + c + task.task.config.fewshot_delimiter for p, c in map(task.labeled_example, demos[:3]))
    budget = Budget("b", "flops", 100 * pricer.extra(three) * 1.01, 100, "amortized", "cached")  # three fit, four do not
    ctx = AdaptContext(model=tiny.model, tokenizer=tiny.tokenizer, task=task, budget=budget,
                       settings=compose("strategy=icl", "strategy.shots=8").strategy, seed=0, workdir=tmp_path,
                       device=torch.device("cpu"), progress=False, pricing=pricer)
    adaptation = get_strategy("icl").adapt(ctx)
    use = adaptation.budget
    assert adaptation.labels_used == 3 and adaptation.prefix == three and use.bound and use.spent <= budget.amount
    assert use.parts["queries"] == pytest.approx(100 * adaptation.per_query_extra_flops)
    # Evaluation then measured longer outputs than assumed: re-priced, the horizon no longer fits.
    docs = pricer.docs  # the same queries, so that only the output length differs
    settle_budget(adaptation, budget, pricer, docs, list(range(len(docs))), {"generated_tokens": float(MAX_NEW)})
    after = use.after_eval
    assert after["queries"] == pytest.approx(100 * pricer.extra(adaptation.prefix, gen_tokens=MAX_NEW, docs=docs))
    assert after["queries"] > use.parts["queries"] and use.overspent == pytest.approx(after["spent"] - budget.amount)
    assert use.overspent > 0


@needs_data
def test_longest_input_counts_positions_not_packed_rows(tiny):
    """The ICL strategy refuses prompts beyond the context window by `longest`: it must be the longest
    context + continuation (the positions a choice reaches), not the width of the shared-context scorer's
    packed row, which holds every choice of an item."""
    from harness.evaluate import render_requests
    from harness.pricing import QueryPricer
    from harness.tasks import TaskHandle

    task = TaskHandle.from_cfg(compose("task=arc_challenge").task)
    pricer = QueryPricer(task, tiny.tokenizer, ModelShape.of(tiny.model), n_docs=8, scorer="shared_context")
    prefix = "Question: Which is a gas?\nAnswer: steam\n\n"
    want = max(len(tiny.tokenizer(r.arguments[0] + r.arguments[1], add_special_tokens=False)["input_ids"])
               for d in pricer.docs for r in render_requests(task, d, prefix))
    assert pricer.longest(prefix) == want
    assert max(new + old for d in pricer.docs for new, old, _ in pricer._passes(d, prefix)) > want
