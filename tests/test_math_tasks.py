"""GSM8K and MATH: answer extraction, Minerva normalization, reference answers, malformed rows."""
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import compose, needs_data
from harness.answers import (gsm8k_extract, gsm8k_gold, last_boxed, math_answer, math_equal, math_verify_outputs,
                             normalize_math_answer, normalize_number)
from harness.errors import HarnessError


def _rows(*parts):
    path = Path(os.environ["HARNESS_DATA_DIR"]).joinpath(*parts)
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


@pytest.mark.parametrize("text, strict, flexible", [
    ("So she makes 9 * 2 = $18.\n#### 18", "18", "18"),
    ("#### 1,234.00", "1234", "1234"),
    ("It costs $1,000 and then 3 more.\nThe answer is $1,003.", None, "1003"),
    ("First 4, then 7, finally -2.5", None, "-2.5"),
    ("I do not know", None, None),
    ("#### -7\nQuestion: next one has 12", "-7", "-7"),  # the first '####' wins, as in lm-eval's strict-match
])
def test_gsm8k_extraction(text, strict, flexible):
    assert gsm8k_extract(text) == (strict, flexible)


def test_numbers_normalize_to_one_form():
    assert normalize_number("$1,000.00") == "1000"
    assert normalize_number("-3.50") == "-3.5"
    assert normalize_number("abc") is None
    with pytest.raises(ValueError, match="no '####'"):
        gsm8k_gold("just text")


@needs_data
def test_gsm8k_reference_solutions_all_score():
    rows = _rows("openai", "gsm8k", "main", "test.jsonl") + _rows("openai", "gsm8k", "main", "train.jsonl")
    wrong = [r["question"][:40] for r in rows if gsm8k_extract(r["answer"]) != (gsm8k_gold(r["answer"]),) * 2]
    assert len(rows) == 1319 + 7473 and wrong == []


@pytest.mark.parametrize("raw, normal", [
    ("\\frac12", "\\frac{1}{2}"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("\\sqrt[3]8", "\\sqrt[3]{8}"),
    ("x = 5 \\text{ cm}", "5"),
    ("10,000", "10000"),
    ("1,3", "1,3"),  # a list of integers, not 13
    ("\\$42", "42"),
    ("\\boxed{7}", "7"),
    ("\\left( 1, 2 \\right)", "\\left(1,2\\right)"),  # 'ft' inside \left survives
    ("90^\\circ", "90"),
    ("\\textbf{(B)}", "(B)"),
])
def test_minerva_normalization(raw, normal):
    assert normalize_math_answer(raw) == normal


def test_math_answer_prefers_the_minerva_sentence_then_the_last_box():
    assert math_answer("... so $x=\\boxed{3}$.") == "3"
    assert math_answer("Final Answer: The final answer is $\\frac{2}{3}$. I hope it is correct.") == "$\\frac{2}{3}$"
    assert math_answer("work \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert math_answer("cut off \\boxed{\\frac{1}{") is None
    assert last_boxed("hence \\boxed 5$.") == "5"
    assert last_boxed("\\fbox{12}") == "12"


def test_math_equivalence_is_symbolic_where_strings_differ():
    assert math_equal("\\frac{1}{2}", "0.5")
    assert math_equal("\\dfrac{6}{4}", "\\frac{3}{2}")
    assert math_equal("2\\sqrt{2}", "\\sqrt{8}")
    assert not math_equal("\\frac{1}{3}", "0.5")
    assert not math_equal(None, "1")
    assert math_verify_outputs("so the answer is $\\boxed{0.5}$", "We get $\\boxed{\\frac12}$.")


@needs_data
def test_math_reference_solutions_all_score():
    """Every MATH test solution, read as a model's output, matches its own reference answer."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tasks" / "math"))
    import utils as math_utils  # the task's own process_results hook

    rows = _rows("EleutherAI", "hendrycks_math", "all", "test.jsonl")
    wrong = [i for i, r in enumerate(rows) if not math_equal(math_answer(r["solution"]), last_boxed(r["solution"]))]
    assert len(rows) == 5000 and wrong == []
    scored = math_utils.math_results(rows[0], [rows[0]["solution"]])
    # A solution ends in \boxed{}, not in Minerva's "Final Answer" sentence: lm-eval reads no answer.
    assert scored == {"exact_match_lenient": 1.0, "exact_match_minerva": 0.0, "math_verify": 1.0}
    minerva_style = rows[0]["solution"] + f"\nFinal Answer: The final answer is ${last_boxed(rows[0]['solution'])}$. " \
        "I hope it is correct."
    assert math_utils.math_results(rows[0], [minerva_style])["exact_match_minerva"] == 1.0
    sys.path.remove(str(Path(__file__).resolve().parents[1] / "tasks" / "math"))
    sys.modules.pop("utils", None)


@needs_data
@pytest.mark.parametrize("task, n_eval, n_pool", [("gsm8k", 1319, 7473), ("math", 4500, 500)])
def test_math_tasks_load_with_disjoint_pools(task, n_eval, n_pool):
    from harness.tasks import TaskHandle

    handle = TaskHandle.from_cfg(compose(f"task={task}").task)
    assert handle.generative and len(handle.eval_docs) == n_eval
    assert len(handle.pool_docs) <= n_pool
    field = "question" if task == "gsm8k" else "problem"
    assert not {d[field] for d in handle.eval_docs} & {d[field] for d in handle.pool_docs}
    prompt, completion = handle.labeled_example(handle.pool_docs[0])
    assert prompt.endswith(("Answer:", "Solution:")) and completion.startswith(" ") and len(completion) > 10


@needs_data
def test_malformed_row_names_task_split_and_row(tmp_path, monkeypatch):
    src = Path(os.environ["HARNESS_DATA_DIR"]) / "openai" / "gsm8k" / "main"
    dst = tmp_path / "openai" / "gsm8k" / "main"
    dst.mkdir(parents=True)
    shutil.copy(src / "train.jsonl", dst / "train.jsonl")
    rows = (src / "test.jsonl").read_text().split("\n")[:5]
    bad = json.loads(rows[3])
    bad["answer"] = bad["answer"].replace("####", "answer:")
    rows[3] = json.dumps(bad)
    (dst / "test.jsonl").write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    from harness.tasks import TaskHandle

    with pytest.raises(HarnessError) as err:
        TaskHandle.from_cfg(compose("task=gsm8k").task)
    message = str(err.value)
    assert "task gsm8k" in message and "row 3" in message and "openai/gsm8k/main/test" in message
    assert "\n" not in message


@needs_data
def test_chat_template_is_used_for_generation_tasks_of_instruct_models_only(tiny):
    from harness.runner import use_chat_template
    from harness.tasks import TaskHandle

    gsm8k = TaskHandle.from_cfg(compose("task=gsm8k").task)
    arc = TaskHandle.from_cfg(compose("task=arc_easy").task)
    tok = tiny.tokenizer  # SmolLM2's tokenizer, which has a chat template
    assert use_chat_template(compose("model=smollm2-135m", "task=gsm8k"), gsm8k, tok)
    assert not use_chat_template(compose("model=tiny-random", "task=gsm8k"), gsm8k, tok)  # not instruct
    assert not use_chat_template(compose("model=smollm2-135m", "task=arc_easy"), arc, tok)  # log-likelihood
    assert not use_chat_template(compose("model=smollm2-135m", "engine.chat_template=false"), gsm8k, tok)
    with pytest.raises(HarnessError, match="auto, true or false"):
        use_chat_template(compose("model=smollm2-135m", "engine.chat_template=sometimes"), gsm8k, tok)

    doc = gsm8k.pool_docs[0]
    plain_prompt, plain_completion = gsm8k.training_example(doc)
    assert (plain_prompt, plain_completion) == gsm8k.labeled_example(doc)
    gsm8k.use_chat(tok)
    assert gsm8k.task.config.generation_kwargs["until"] == ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"]
    prompt, completion = gsm8k.training_example(doc)
    assert prompt.endswith("<|im_start|>assistant\n") and plain_prompt in prompt
    assert completion.startswith(plain_completion.strip()) and "<|im_end|>" in completion
