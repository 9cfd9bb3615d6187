"""exact_match_minerva against lm-eval 0.4.13's own minerva_math functions.

lm-eval's module asserts antlr4-python3-runtime 4.11 when imported, and sympy's LaTeX parser, which
its `is_equiv` calls, refuses the 4.9.3 that Hydra pins. Its string functions need no parser, so the
module is imported past that assertion and they are compared live. Verdicts that need sympy's parser
are literals recorded from lm-eval 0.4.13's own functions run under antlr4 4.11.1 (no Hydra there);
`test_verdicts_live_under_antlr_411` reruns them where such a runtime is at hand.
"""
import importlib
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import needs_data
from harness import answers
from harness.answers import (math_answer, math_equal, last_boxed, minerva_equivalent, minerva_exact_match,
                             minerva_reference, minerva_stated_answer, normalize_math_answer)

LM_MODULE = "lm_eval.tasks.minerva_math.utils"


@pytest.fixture(scope="module")
def lm():
    """lm-eval 0.4.13's minerva_math utils, imported although the installed antlr4 is not 4.11."""
    import math_verify  # noqa: F401  (latex2sympy2 picks its parser by the runtime's version: the real one)

    real_version = importlib.metadata.version
    importlib.metadata.version = lambda name: "4.11.1" if name == "antlr4-python3-runtime" else real_version(name)
    try:
        module = importlib.import_module(LM_MODULE)
    finally:
        importlib.metadata.version = real_version
    assert real_version("lm_eval") == "0.4.13"
    yield module
    sys.modules.pop(LM_MODULE, None)


def _math_rows():
    path = Path(os.environ["HARNESS_DATA_DIR"]) / "EleutherAI" / "hendrycks_math" / "all" / "test.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def _lm_reference(lm, solution):
    """What lm-eval's process_docs stores as a row's answer."""
    return lm.normalize_final_answer(lm.remove_boxed(lm.last_boxed_only_string(solution)))


def _minerva_output(answer):
    return f"Final Answer: The final answer is {answer}. I hope it is correct."


HALF = "Hence $x = \\boxed{\\frac{1}{2}}$."
ROOTS = "The roots are $\\boxed{1,3}$."
# (output, reference solution, lm-eval 0.4.13's exact_match under antlr4 4.11.1, ours where hand-checked)
HAND_WRITTEN = {
    "minerva sentence": ("So x is one half.\n" + _minerva_output("$\\frac{1}{2}$"), HALF, True, True),
    "decimal": (_minerva_output("$0.5$"), HALF, True, True),
    "dfrac": (_minerva_output("$\\dfrac{1}{2}$"), HALF, True, True),
    "shorthand frac": (_minerva_output("$\\frac12$"), HALF, True, True),
    "no closing words": ("Final Answer: The final answer is $\\frac{1}{2}$.", HALF, False, True),
    "no closing words, trailing space": ("Final Answer: The final answer is $\\frac{1}{2}$ ", HALF, True, True),
    "closing words without period": ("Final Answer: The final answer is $\\frac{1}{2}$ I hope it is correct.",
                                     HALF, True, True),
    "first of two wrong": (_minerva_output("$3$") + "\n" + _minerva_output("$\\frac{1}{2}$"), HALF, False, True),
    "first of two right": (_minerva_output("$\\frac{1}{2}$") + "\n" + _minerva_output("$3$"), HALF, True, False),
    "two on one line": (_minerva_output("$3$") + " " + _minerva_output("$\\frac{1}{2}$"), HALF, False, True),
    "boxed only": ("We find $x = \\boxed{\\frac{1}{2}}$.", HALF, False, True),
    "sentence broken by a newline": ("Final Answer: The final answer is\n$\\frac{1}{2}$. I hope it is correct.",
                                     HALF, False, False),
    "boxed inside the sentence": (_minerva_output("$\\boxed{\\frac{1}{2}}$"), HALF, True, True),
    "equation": (_minerva_output("$x = \\frac{1}{2}$"), HALF, True, True),
    "wrong": (_minerva_output("$\\frac{1}{3}$"), HALF, False, False),
    "empty": ("Final Answer: The final answer is . I hope it is correct.", HALF, False, False),
    "exclamation mark": ("Final Answer: The final answer is 5! I hope it is correct.", "$\\boxed{5}$", True, None),
    "integer list": (_minerva_output("$1, 3$"), ROOTS, True, True),
    "integer list fused": (_minerva_output("$13$"), ROOTS, False, False),
    "integer list with 'and'": (_minerva_output("$1 \\text{ and } 3$"), ROOTS, True, True),
    "thousands in the reference": (_minerva_output("$1000$"), "So $\\boxed{1,000}$ ways.", True, True),
    "thousands in the output": (_minerva_output("$1,000$"), "So $\\boxed{1000}$ ways.", True, True),
    "thousands with braced commas": (_minerva_output("$-1{,}000{,}000$"), "$\\boxed{-1000000}$", True, True),
    "not a thousands grouping": (_minerva_output("$10,00$"), "$\\boxed{1000}$", False, False),
    "unit in text": (_minerva_output("$5\\text{ cm}$"), "$\\boxed{5}$", True, True),
    "unit glued on": (_minerva_output("5cm"), "$\\boxed{5}$", True, True),
    "degrees": (_minerva_output("$30^\\circ$"), "$\\boxed{30}$", True, True),
    "dollars": (_minerva_output("\\$42"), "$\\boxed{42}$", True, True),
    "trailing period": (_minerva_output("$10.$"), "$\\boxed{10}$", True, True),
    "surd": (_minerva_output("$\\sqrt{8}$"), "$\\boxed{2\\sqrt{2}}$", True, True),
    "surd shorthand": (_minerva_output("$2\\sqrt2$"), "$\\boxed{2\\sqrt{2}}$", True, True),
    "pi against a decimal": (_minerva_output("$\\pi$"), "$\\boxed{3.14}$", False, False),
    "interval": (_minerva_output("$[2, 5)$"), "$\\boxed{[2,5)}$", True, True),
    "other interval": (_minerva_output("$[2, 5]$"), "$\\boxed{[2,5)}$", False, False),
    "tuple": (_minerva_output("$(1, -2)$"), "$\\boxed{(1,-2)}$", True, True),
    "inequality": (_minerva_output("$x \\ge 2$"), "$\\boxed{x \\ge 2}$", True, True),
    "inequality turned around": (_minerva_output("$2 \\le x$"), "$\\boxed{x \\ge 2}$", False, None),
    "choice letter": (_minerva_output("$\\text{(C)}$"), "$\\boxed{\\text{(C)}}$", True, True),
    "expanded polynomial": (_minerva_output("$x^2+2x+1$"), "$\\boxed{(x+1)^2}$", True, True),
    "left and right": (_minerva_output("$\\left( 3, \\frac{\\pi}{2} \\right)$"),
                       "$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", True, True),
    "reference boxed with a space": (_minerva_output("$7$"), "so the answer is $\\boxed 7$.", True, True),
    "no answer at all": ("I could not solve it.", "$\\boxed{5}$", False, False),
}


@pytest.mark.parametrize("case", list(HAND_WRITTEN))
def test_hand_written_outputs_read_and_scored_as_lm_eval_does(lm, case):
    output, solution, lm_verdict, lenient = HAND_WRITTEN[case]
    stated = minerva_stated_answer(output)
    assert stated == lm.get_unnormalized_answer(output)
    assert normalize_math_answer(stated) == lm.normalize_final_answer(stated)
    assert normalize_math_answer(minerva_reference(solution)) == _lm_reference(lm, solution)
    assert minerva_exact_match(output, solution) is lm_verdict
    if lenient is not None:  # ours reads more: every sentence, the closing words optional, boxes
        assert math_equal(math_answer(output), last_boxed(solution)) is lenient


@pytest.mark.parametrize("raw, normal", [
    ("1,3", "1,3"),  # the paper's rule made this 13
    ("3, 5, 7", "3,5,7"),
    ("1,000", "1000"),
    ("-12,345,678", "-12345678"),
    ("1,0000", "1,0000"),
    ("12,34", "12,34"),
    ("1,000.5", "1,000.5"),
    ("\\$1,000", "1000"),
    ("19 \\text{ and }43", "19,43"),
    ("27^\\circ, 63^\\circ", "27,63"),
    ("2\\pi cm", "2\\pi"),
    ("\\left( 1, 2 \\right)", "\\left(1,2\\right)"),
    (" 5\n", "5\n"),  # lm-eval strips nothing at the ends
])
def test_comma_and_unit_rules_match_lm_eval(lm, raw, normal):
    assert normalize_math_answer(raw) == normal
    assert lm.normalize_final_answer(raw) == normal


def _random_texts(pieces, n, seed):
    rng = random.Random(seed)
    return ["".join(rng.choices(pieces, k=rng.randint(1, 12))) for _ in range(n)]


def _lm_reference_or_none(lm, solution):
    try:
        return lm.remove_boxed(lm.last_boxed_only_string(solution))
    except (AssertionError, TypeError):  # lm-eval's task would fail to load such a row
        return None


def test_random_strings_read_and_normalize_as_in_lm_eval(lm):
    """Texts strung from the pieces each rule reacts to, through lm-eval's functions and ours."""
    answers_ = _random_texts(["1", "3", "000", ",", " ", "cm", "ft", "square", "units", "\\left", "(", ")", "\\text{",
                              "{", "}", "$", "\\$", ".", "=", "\\frac", "\\sqrt", "[", "]", "2", "^\\circ", "and ",
                              "a ", "\\boxed{", "-", ",\\!", "{,}", "\n", "x", "\\dfrac", "\\;", "\\mbox{"], 3000, 0)
    assert [normalize_math_answer(a) for a in answers_] == [lm.normalize_final_answer(a) for a in answers_]
    outputs = _random_texts(["Final Answer: The final answer is", " I hope it is correct.", "I hope it is correct",
                             ".", " ", "\n", "$5$", "x", "!"], 3000, 1)
    assert [minerva_stated_answer(o) for o in outputs] == [lm.get_unnormalized_answer(o) for o in outputs]
    solutions = _random_texts(["\\boxed{", "\\boxed ", "\\boxed", "{", "}", "$", "5", "\\fbox{", " ", "x"], 3000, 2)
    assert [minerva_reference(s) for s in solutions] == [_lm_reference_or_none(lm, s) for s in solutions]


@needs_data
def test_reference_answers_of_all_5000_test_rows_match_lm_eval(lm):
    rows = _math_rows()
    ours = [normalize_math_answer(minerva_reference(r["solution"])) for r in rows]
    theirs = [_lm_reference(lm, r["solution"]) for r in rows]
    assert len(rows) == 5000
    assert [i for i in range(5000) if ours[i] != theirs[i]] == []
    # The paper's comma rule (drop every comma when only digits remain) would fuse 20 of them.
    assert sum("," in a and a.replace(",", "").isdigit() for a in theirs) == 20
    assert (theirs[1311], theirs[2180], theirs[4287]) == ("1,3", "4,6,14,15", "12,13")


# The two rows whose answer, put into Minerva's sentence, does not normalize to the reference's own
# string, with lm-eval's verdicts under antlr4 4.11.1: a reference ending in a period, and one whose
# \text{ square\nunits} breaks the sentence across lines (an invalid answer).
_NEEDS_SYMPY = {("\\frac{7}{5}+\\frac{1}{5}i", "\\frac{7}{5}+\\frac{1}{5}i."): True,
                ("[invalidanswer]", "90"): False}


@needs_data
def test_minerva_sentences_of_all_5000_reference_answers_score_as_in_lm_eval(lm):
    rows = _math_rows()
    sympy_pairs = {}
    for row in rows:
        raw = lm.remove_boxed(lm.last_boxed_only_string(row["solution"]))
        output = row["solution"] + "\n" + _minerva_output(f"${raw}$")
        stated = lm.get_unnormalized_answer(output)
        assert minerva_stated_answer(output) == stated
        pred, gold = lm.normalize_final_answer(stated), _lm_reference(lm, row["solution"])
        if pred == gold:  # lm-eval decides these without its parser
            expected = lm.is_equiv(pred, gold)
        else:
            expected = sympy_pairs[(pred, gold)] = _NEEDS_SYMPY.get((pred, gold))
        assert minerva_exact_match(output, row["solution"]) is expected, row["problem"][:60]
    assert sympy_pairs == _NEEDS_SYMPY


@needs_data
def test_a_solution_alone_is_no_answer_for_minerva(lm):
    """A MATH solution ends in \\boxed{}, not Minerva's sentence: lm-eval reads no answer (0 of 400 rows
    sampled under antlr4 4.11.1), ours reads the box."""
    rows = _math_rows()
    for i in random.Random(0).sample(range(5000), 400)[:15]:
        solution = rows[i]["solution"]
        assert lm.get_unnormalized_answer(solution) == minerva_stated_answer(solution) == "[invalidanswer]"
        assert not minerva_exact_match(solution, solution)
        assert math_equal(math_answer(solution), last_boxed(solution))


def test_equivalence_follows_lm_eval_is_equiv_given_the_same_parser(lm, monkeypatch, capsys):
    """lm-eval's own is_equiv (its equal-string shortcut, exception handling, simplify), fed sympy's parser
    as loaded here, agrees with ours; the parser itself is checked against antlr4 4.11 above."""
    monkeypatch.setattr(lm, "parse_latex", answers._latex_to_sympy)
    pairs = [("\\frac{1}{2}", "0.5"), ("\\dfrac{3}{2}", "\\frac{3}{2}"), ("(1,2)", "(1,2)"), ("x", "y"),
             ("", ""), ("x\\ge2", "x\\ge2"), ("2\\lex", "x\\ge2"), ("x=1", "1"), ("[invalidanswer]", "5"),
             ("\\sqrt{8}", "2\\sqrt{2}"), ("\\frac{1}{0}", "\\infty"), ("1,3", "13"), ("\\{1,2\\}", "\\{2,1\\}"),
             ("a+b", "b+a"), ("\\text{(C)}", "(C)"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)")]
    for pred, gold in pairs:
        assert minerva_equivalent(pred, gold) == lm.is_equiv(pred, gold), (pred, gold)
    assert capsys.readouterr().out == ""  # no ANTLR version warning per parse


def test_equivalence_works_off_the_main_thread():
    verdicts = []
    worker = threading.Thread(target=lambda: verdicts.append(minerva_equivalent("\\frac{1}{2}", "0.5")))
    worker.start()
    worker.join()
    assert verdicts == [True]


def test_unreadable_reference_is_an_error_not_a_zero():
    assert minerva_reference("\\fbox{12}") is None  # lm-eval's remove_boxed asserts on it
    assert minerva_reference("cut \\boxed{12") is None
    with pytest.raises(ValueError, match="no \\\\boxed"):
        minerva_exact_match(_minerva_output("12"), "no box at all")


_LIVE = """
import json, sys
import lm_eval.tasks.minerva_math.utils as lm
verdicts = []
for output, solution in json.load(sys.stdin):
    gold = lm.normalize_final_answer(lm.remove_boxed(lm.last_boxed_only_string(solution)))
    verdicts.append(bool(lm.is_equiv(lm.normalize_final_answer(lm.get_unnormalized_answer(output)), gold)))
print(json.dumps(verdicts))
"""


@pytest.mark.skipif(not os.environ.get("HARNESS_ANTLR411"), reason="set HARNESS_ANTLR411 to a folder holding "
                    "antlr4 4.11 (pip install --target DIR antlr4-python3-runtime==4.11.1) to run lm-eval itself")
def test_verdicts_live_under_antlr_411():
    """lm-eval's own process_results path, in a process whose antlr4 is 4.11, against ours."""
    pairs = [(output, solution) for output, solution, _, _ in HAND_WRITTEN.values()]
    if os.environ.get("HARNESS_DATA_DIR"):  # 40 rows: their answer as \dfrac, and against the next row's
        sample = [r["solution"] for r in random.Random(1).sample(_math_rows(), 40)]
        for k, solution in enumerate(sample):
            answer = "$" + minerva_reference(solution) + "$"
            pairs += [(_minerva_output(answer.replace("\\frac", "\\dfrac")), solution),
                      (_minerva_output(answer), sample[(k + 1) % len(sample)])]
    env = dict(os.environ, PYTHONPATH=os.environ["HARNESS_ANTLR411"])
    done = subprocess.run([sys.executable, "-c", _LIVE], input=json.dumps(pairs), env=env, capture_output=True,
                          text=True, timeout=600, check=True)
    assert json.loads(done.stdout) == [minerva_exact_match(output, solution) for output, solution in pairs]
