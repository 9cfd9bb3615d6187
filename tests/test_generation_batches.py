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



def test_the_stop_check_flags_a_row_once_a_stop_string_is_in_its_generated_text(tiny):
    """The on-device criterion against its definition, decoded text: at every step of random generations built
    from tokens that make and break stop strings, a row is finished exactly when a stop string occurs in the
    decoded generated tokens so far (never counting one that straddles the prompt's end)."""
    from harness.evaluate import stop_strings_criterion

    tok = tiny.tokenizer
    stops = ["\n\n", "Question:", "```"]
    pieces = ["\n", "\n\n", ".\n", " Question", "Question", ":", " the", "``", "`", " 42", ".", ":\n\n"]
    vocab = sorted({t for p in pieces for t in tok(p, add_special_tokens=False)["input_ids"]})
    prompt = tok("Answer the question.\n", add_special_tokens=False)["input_ids"]  # ends in a newline
    g = torch.Generator().manual_seed(0)
    rows = torch.tensor(vocab)[torch.randint(len(vocab), (64, 14), generator=g)]
    ids = torch.cat([torch.tensor(prompt).expand(64, -1), rows], dim=1)
    criterion = stop_strings_criterion(tok, stops, len(prompt))
    finished = torch.zeros(64, dtype=torch.bool)
    flips = 0
    for t in range(1, rows.shape[1] + 1):
        now = finished | criterion(ids[:, :len(prompt) + t], None)
        flips += int((now & ~finished).sum())
        finished = now
        truth = [any(s in tok.decode(rows[r, :t]) for s in stops) for r in range(64)]
        assert finished.tolist() == truth, t
    assert 10 < flips < 64  # most rows stop at some step, not all at once, not none


@pytest.mark.integration
def test_rows_stopping_on_different_strings_finish_each_on_its_own(smollm2):
    """lm-eval ends a batch only when one stop string has stopped every row: rows stopped by different strings
    run to max_gen_toks. Ours finishes each row when any string appears: the same texts as lm-eval's own
    batched path, and the batch generates only as many steps as its longest row needs alone."""
    from lm_eval.models.huggingface import HFLM

    from harness.costs import PhaseMeter
    from harness.evaluate import metered_lm_class
    from harness.flops import ModelShape

    model, tok = smollm2.model, smollm2.tokenizer
    contexts = ["The capital of France is", "Once upon a time", "The three primary colours are",
                "Question: what is 2 + 3?\nAnswer:"]
    until = ["\n", "."]

    def run(lm):
        from lm_eval.api.instance import Instance

        kwargs = {"until": list(until), "max_gen_toks": 48, "do_sample": False}
        return lm.generate_until([Instance(request_type="generate_until", doc={}, arguments=(c, dict(kwargs)), idx=i)
                                  for i, c in enumerate(contexts)], disable_tqdm=True)

    def ours(batch_size):
        meter = PhaseMeter("inference", "cpu")
        lm = metered_lm_class()(pretrained=model, tokenizer=tok, batch_size=batch_size, meter=meter,
                                shape=ModelShape.of(model))
        with meter:
            texts = run(lm)
        return texts, meter.cost.details

    want = run(HFLM(pretrained=model, tokenizer=tok, batch_size=4))
    got, batched = ours(4)
    assert got == want
    assert batched["generate_calls"] == 1
    _, alone = ours(1)  # each prompt alone: its own number of steps
    steps = batched["generated_tokens"] // 4
    assert steps * 4 == batched["generated_tokens"] < 4 * 48
    assert alone["generated_tokens"] <= batched["generated_tokens"]
    assert steps == max_steps_alone(model, tok, contexts, until)


def max_steps_alone(model, tok, contexts, until) -> int:
    """Greedy steps until the first stop string shows in the decoded output, the longest over the prompts:
    generated token by token here, decoded and searched on the host (the definition, not the criterion)."""
    longest = 0
    for context in contexts:
        ids = tok(context, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=tok.eos_token_id)[0, ids.shape[1]:]
        steps = next((t for t in range(1, len(out) + 1) if any(s in tok.decode(out[:t]) for s in until)), len(out))
        longest = max(longest, steps)
    return longest
