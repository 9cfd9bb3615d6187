"""MATH-Vision and MathVista answer reading and scoring (harness/vision_answers.py).

Every expected value is written by hand from the official rules (mathllm/MATH-V evaluation/evaluate.py
and utils.py; lupantech/MathVista evaluation/extract_answer.py and calculate_score.py), not recomputed.
"""
import pytest

from harness.vision_answers import (find_numbers, mathvision_answer, mathvision_correct, mathvista_answer,
                                    mathvista_correct, number_with_unit)

# ----------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("text, number", [
    ("12 cm", "12"), ("12cm", "12"), ("3,000", "3000"), ("-2.5", "-2.5"), ("$5", "5"), ("-$5", "-5"),
    ("45%", "45"), ("30°", "30"), ("4 cm^2", "4"), (".5", "0.5"), ("1,234,567.5 dollars", "1234567.5"),
    ("2x", None),  # one letter may be a variable, not a unit
    ("x = 5", None), ("3 and 4", None), ("", None), ("twelve", None),
])
def test_number_with_unit(text, number):
    assert number_with_unit(text) == number


def test_find_numbers_skips_exponents_subscripts_and_splits_lists():
    assert find_numbers("The area is 12 m^2, x_1 = −3 and the sum is $1,000.50.") == ["12", "-3", "1000.50"]
    assert find_numbers("pick 1,2 or 5-3") == ["1", "2", "5", "3"]  # "1,2" is a list; "5-3" has no -3
    assert find_numbers("no digits here") == []


# ------------------------------------------------------------------------------------- MATH-Vision

OPTIONS = ["3", "4", "5", "6", "7"]


@pytest.mark.parametrize("output, letter", [
    ("(B)", "B"),
    ("B.", "B"),
    ("B", "B"),
    ("\\boxed{B}", "B"),
    ("\\boxed{(C)}", "C"),
    ("\\boxed{\\text{E}}", "E"),
    ("The answer is B", "B"),
    ("Reasoning...\nThe answer is (B).", "B"),  # the form our prompt asks for
    ("Counting the faces, the answer is d", "D"),  # lower case is the same letter
    ("The correct answer is (C).", "C"),  # ends " (C)."
    ("So it is D.", "D"),  # ends " D."
    ("A\nbecause the square is larger", "A"),  # starts "A\n"
    ("First \\boxed{A}, no wait: \\boxed{E}", "E"),  # the last box
    ("The answer is 5.", "C"),  # option text "5" is option C
    ("The answer is 6.0", "D"),  # ... equal in value to option D
    ("Answer: B", None),  # the official rules know no "Answer:" (it reads "answer:b")
    ("The answer is (B) 4", None),  # officially "b4": neither a letter nor an option
    ("The answer is 9", None),  # no such option
    ("", None),
    ("   \n", None),
])
def test_mathvision_choice_letters(output, letter):
    assert mathvision_answer(output, OPTIONS) == letter


@pytest.mark.parametrize("output, answer", [
    ("The answer is 12 cm.", "12"),
    ("\\boxed{12 \\text{ cm}}", "12"),
    ("\\boxed{3,000}", "3000"),
    ("-2.5", "-2.5"),
    ("The answer is $5.", "5"),
    ("It is 6.0", "6.0"),
    ("x = 5", "5"),  # the part after the last "="
    ("so 2+3=5 apples", "5"),
    ("After adding, we get 7 apples in total", "7"),  # nothing marked: the last number (ours)
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("The final answer is (1, 2)", "(1,2)"),
    ("The answer is x^2+1.", "x^2+1"),
    ("The answer is 2x.", "2x"),
    ("", None),
])
def test_mathvision_free_form_answers(output, answer):
    assert mathvision_answer(output, []) == answer


@pytest.mark.parametrize("output, gold, right", [
    ("The answer is 6.0", "6", True),
    ("\\boxed{6}", "6.0", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("The answer is 1/2", "\\frac{1}{2}", True),
    ("\\boxed{2\\sqrt{3}}", "3.46", True),  # 3.4641 to 2 decimals
    ("\\boxed{\\pi}", "3.14", True),
    ("\\boxed{3,000}", "3000", True),
    ("The answer is 12 cm.", "12", True),
    ("\\boxed{30^\\circ}", "30", True),
    ("The final answer is (1, 2)", "(1,2)", True),
    ("The answer is x^2+1.", "x^2+1", True),
    ("The answer is 7.", "8", False),
    ("\\boxed{3.14}", "3.15", False),
    ("The final answer is (2, 1)", "(1,2)", False),
    ("", "8", False),
])
def test_mathvision_correct_free_form(output, gold, right):
    assert mathvision_correct(output, {"answer": gold, "options": []}) is right


def test_mathvision_correct_multiple_choice():
    doc = {"answer": "C", "options": OPTIONS}
    assert mathvision_correct("The answer is C", doc)
    assert mathvision_correct("The answer is 5.", doc)  # C's text
    assert not mathvision_correct("The answer is B", doc)
    assert not mathvision_correct("The answer is 4.", doc)  # B's text
    assert not mathvision_correct("", doc)
    fractions = {"answer": "A", "options": ["$\\frac{1}{2}$", "$\\frac{1}{3}$"]}
    assert mathvision_correct("The answer is 0.5", fractions)


# --------------------------------------------------------------------------------------- MathVista

FRACTIONS = {"question_type": "multi_choice", "answer_type": "text", "choices": ["3/11", "8/11", "6/11", "3/5"],
             "precision": None, "unit": None, "answer": "8/11"}
CITIES = {"question_type": "multi_choice", "answer_type": "text",
          "choices": ["hong kong", "osaka", "shanghai", "tokyo"], "precision": None, "unit": None, "answer": "tokyo"}


def free_form(answer_type, answer, precision=None, unit=None):
    return {"question_type": "free_form", "answer_type": answer_type, "choices": None, "precision": precision,
            "unit": unit, "answer": answer}


@pytest.mark.parametrize("output, choice", [
    ("The correct answer is (B) 8/11.", "8/11"),
    ("B", "8/11"),
    ("(B)", "8/11"),
    ("B. 8/11", "8/11"),
    ("\\boxed{C}", "6/11"),
    ("Answer: D", "3/5"),
    ("The answer is: **A**", "3/11"),
    ("8/11", "8/11"),  # the whole output is an option
    ("The answer is 6/11", "6/11"),
    ("(b)", "8/11"),  # official: a letter in parentheses, upper-cased
    ("B because the shaded part is 8 of 11", "8/11"),
    ("I'd say 8/12", "8/11"),  # nearest option by edit distance
    ("", None),
])
def test_mathvista_choices(output, choice):
    assert mathvista_answer(output, FRACTIONS) == choice


@pytest.mark.parametrize("output, choice", [
    ("The answer is D (tokyo).", "tokyo"),
    ("Tokyo", "tokyo"),
    ("tokio", "tokyo"),  # one edit away
    ('The answer is "shanghai".', "shanghai"),  # the official quick-extract rule
    ("The answer is osaka", "osaka"),
])
def test_mathvista_choices_by_option_text(output, choice):
    assert mathvista_answer(output, CITIES) == choice


def test_mathvista_correct_multiple_choice():
    assert mathvista_correct("The correct answer is (B) 8/11.", FRACTIONS)
    assert not mathvista_correct("The correct answer is (A) 3/11.", FRACTIONS)
    assert mathvista_correct("Japan's largest city: the answer is tokyo.", CITIES)
    assert not mathvista_correct("The answer is osaka", CITIES)
    assert not mathvista_correct("", CITIES)  # not the shortest option, as official would by default


@pytest.mark.parametrize("output, answer", [
    ("14", "14"),
    ("-2", "-2"),
    ("The number missing in the sequence is 14.", "14"),
    ("The answer is 14.0", "14"),
    ("14.7", "14"),  # int(float(x)) truncates
    ("The answer is 3,000 people", "3000"),
    ("The area is 12 m^2", "12"),
    ("\\boxed{\\frac{28}{2}}", "14"),
    ("no idea", None),
    ("", None),
])
def test_mathvista_integer(output, answer):
    assert mathvista_answer(output, free_form("integer", "14")) == answer


@pytest.mark.parametrize("output, precision, answer", [
    ("The fraction of females facing the camera is 0.6, which means six out of ten.", 1, "0.6"),
    ("The answer is 0.63", 1, "0.6"),
    ("The answer is 12.5 cm", 1, "12.5"),
    ("3", 1, "3.0"),
    ("1/2", 1, "0.5"),
    ("Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.", 2, "1.45"),
    ("The answer is 2.3456", 2, "2.35"),
    ("The answer is 1,234.567", 2, "1234.57"),
    ("The answer is 1.5", 2, "1.5"),  # str(round(1.5, 2)) keeps no trailing zero
    ("The answer is unknown", 2, None),
])
def test_mathvista_float_precision(output, precision, answer):
    assert mathvista_answer(output, free_form("float", "0", precision=float(precision))) == answer


def test_mathvista_correct_numbers():
    assert mathvista_correct("Luca needs $1.45.", free_form("float", "1.45", precision=2.0, unit="$"))
    assert mathvista_correct("The answer is 1.454", free_form("float", "1.45", precision=2.0))
    assert not mathvista_correct("The answer is 1.46", free_form("float", "1.45", precision=2.0))
    assert not mathvista_correct("The answer is 1.5", free_form("float", "1.50", precision=2.0))  # official quirk
    assert mathvista_correct("There are 14 birds.", free_form("integer", "14"))
    assert not mathvista_correct("There are 15 birds.", free_form("integer", "14"))


@pytest.mark.parametrize("output, answer", [
    ("The answer is [2007, 2008].", "[2007, 2008]"),
    ("[2007,2008]", "[2007, 2008]"),
    ("The answer is 2007 and 2008", "[2007, 2008]"),
    ("\\boxed{[1, 2, 3]}", "[1, 2, 3]"),
    ("between 2007 and 2008", None),  # nothing marked, no list: GPT-4 would have read it
])
def test_mathvista_list(output, answer):
    assert mathvista_answer(output, free_form("list", "[2007, 2008]")) == answer


def test_mathvista_correct_list():
    assert mathvista_correct("So the answer is [2007, 2008]", free_form("list", "[2007, 2008]"))
    assert not mathvista_correct("So the answer is [2006, 2008]", free_form("list", "[2007, 2008]"))
