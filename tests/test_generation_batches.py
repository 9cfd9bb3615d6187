"""Generation batches split where one long prompt would pad the others (harness/evaluate.py generation_groups)."""
import pytest
import torch

from harness.evaluate import generation_groups


def test_groups_keep_padding_within_twice_the_real_prompt_tokens():
    # longest first: 2000 + 210 pad to 4000 <= 2 x 2210; adding 200 would pad 6000 > 2 x 2410
    assert generation_groups([200, 2000, 180, 210, 190]) == [[1, 3], [0, 4, 2]]
    assert generation_groups([50, 50, 50]) == [[0, 1, 2]]
    assert generation_groups([7]) == [[0]]
    # fifteen MBPP-sized prompts and one with a 2,000-token literal: 32,000 padded positions for 5,000 real
    # unsplit; split, the long prompt shares its group with one other and the rest pad to 214, not 2,000
    lengths = [2000] + [200 + i for i in range(15)]
    groups = generation_groups(lengths)
    padded = sum(max(lengths[r] for r in g) * len(g) for g in groups)
    assert groups[0] == [0, 15] and padded == 2 * 2000 + 14 * 213


def _generate(lm, contexts, max_gen_toks=6):
    from lm_eval.api.instance import Instance

    kwargs = {"until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, arguments=(c, dict(kwargs)), idx=i)
                for i, c in enumerate(contexts)]
    return lm.generate_until(requests, disable_tqdm=True)


@pytest.mark.integration
def test_split_batches_generate_what_each_prompt_generates_alone(smollm2):
    from lm_eval.models.huggingface import HFLM

    from harness.costs import PhaseMeter
    from harness.evaluate import metered_lm_class
    from harness.flops import ModelShape

    model, tok = smollm2.model, smollm2.tokenizer
    long_prompt = "def check(candidate):\n    assert candidate(" + ", ".join(str(i) for i in range(400)) + ")\n\n"
    contexts = [long_prompt + "Write a function that adds two numbers.\n", "The capital of France is",
                "Question: what is 2 + 3?\nAnswer:", "Once upon a time", "def add(a, b):\n    return",
                "The three primary colours are"]
    meter = PhaseMeter("inference", "cpu")
    ours = metered_lm_class()(pretrained=model, tokenizer=tok, batch_size=6, meter=meter,
                              shape=ModelShape.of(model))
    with meter:
        got = _generate(ours, contexts)
    alone = HFLM(pretrained=model, tokenizer=tok, batch_size=1)  # lm-eval's own path, one prompt at a time
    want = _generate(alone, contexts)
    assert got == want
    details = meter.cost.details
    lengths = [len(tok(c)["input_ids"]) for c in contexts]
    assert details["generate_calls"] == len(generation_groups(lengths)) >= 2
    # the long prompt no longer pads the short ones: prefilled positions well under lm-eval's 6 x the longest
    assert details["prompt_tokens"] < 0.5 * 6 * max(lengths)


@pytest.fixture(scope="module")
def smollm2():
    from conftest import compose
    from harness.models import load_model

    return load_model(compose("model=smollm2-135m").model, torch.device("cpu"), torch.float32)

