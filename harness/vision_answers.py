"""Answer extraction and scoring for two multimodal math benchmarks, MATH-Vision and MathVista.

MATH-Vision (MATH-V; mathllm/MATH-V, evaluation/evaluate.py and utils.py) is graded by rules alone,
and we follow them in order: a choice letter at the very start or end of the output, the text after
the last "is " when it is a number, the last \\boxed{...}, else what follows "the (final / correct)
answer is" up to the end of that line or sentence; then its normal form (lower case, no spaces, no
$ or \\text, units "km"/"units"/"m^3" and degree signs dropped, the part after the last "="). A
multiple-choice output is right when that is the gold letter or equals the gold option's text, a
free-form one when it equals the gold as a string, as a tuple, or in value rounded to 2 decimals.

MathVista (lupantech/MathVista, evaluation/extract_answer.py and calculate_score.py) takes an answer
from the output (a few rules, then GPT-4), normalizes it by the question's type and compares it with
the gold as a string: a choice letter becomes its option's text, an unknown text the option nearest
in edit distance; integers are str(int(float(x))), floats str(round(float(x), precision)), lists
str(x). We keep its rules (the whole output an option, an integer, a float, 'The answer is "x".')
and its normalization and comparison exactly.

Where we differ, on purpose:
- MathVista: no GPT-4. When its rules do not apply, a deterministic stand-in reads the output the
  way its extraction prompt's examples do: the last \\boxed{}, else the text after the last
  "answer is"/"answer:", else the whole output; from that a choice letter or option text, the first
  number (the last number of the whole output when no answer was marked), or a [...] list. Numbers
  are read past currency signs, separators and units ("$1,000 cm" -> 1000), so the row's `unit` is
  not needed. Verdicts agree on outputs that state their answer plainly, can differ on rambling ones.
- MathVista: an empty output is unanswered (None, wrong), as with its --ignore_empty_extractions; by
  default it would become the option nearest to "" (the shortest).
- MATH-V: values come from latex2sympy + eval there; here a small evaluator of its own covers
  numbers, \\frac, \\sqrt, \\pi, ^, \\cdot, \\times and implicit products. Tuples compare by rounded
  value, so (1,2) equals (1.0,2.0) where the official string forms differ. An option's text is also
  compared in normal form ("$\\frac{1}{2}$" matches "0.5").
- MATH-V free-form: a number with thousands separators, a currency sign or a unit word of two or
  more letters ("3,000", "$5", "12 cm") counts as that number; officially it fails to parse. An
  output that marks no answer (no box, no "answer is", no "... is <number>") and whose official
  reading is no value gives its last number; the official compares that reading (the whole output,
  or what follows its last "="), which practically never matches.
"""
from __future__ import annotations

import ast
import math
import operator
import re
import string

# -------------------------------------------------------------------------------------- numbers

# Digits glued after a letter, '^', '_' or '.' are not numbers of their own (x2, m^2, x_1); a
# thousands separator only counts between groups of three digits, so the list "1,2" stays two numbers.
_NUMBER = re.compile(r"(?<![\w^.])-?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)", re.ASCII)
_EXPONENT_OR_DECORATION = re.compile(r"\\text|\\mathrm|\^\{?[23]\}?|[\s{}.]")
_UNIT_WORD = re.compile(r"[^\W\d_]{2,}|[^\W\d_]+/[^\W\d_]+|%|\\%|°|\^\\circ")


def _clean_number(literal: str) -> str:
    literal = literal.replace(",", "")
    return literal.replace(".", "0.", 1) if literal.lstrip("-").startswith(".") else literal


def _numbers(text: str) -> tuple[list[re.Match], str]:
    cleaned = text.replace("$", "").replace("−", "-").replace("\\,", "").replace("\\!", "")
    return list(_NUMBER.finditer(cleaned)), cleaned


def find_numbers(text: str) -> list[str]:
    """Every number written in `text`, in order, as a plain decimal: '$3,000' -> '3000', '−2.5' -> '-2.5'."""
    matches, _ = _numbers(text)
    return [_clean_number(m.group()) for m in matches]


def number_with_unit(text: str) -> str | None:
    """The number when `text` is one number with at most a currency sign and a unit after it, else None.

    '12 cm', '12cm', '$5', '3,000', '-2.5', '45%', '30°', '4 cm^2' give their number; '2x' and '4 m'
    do not (a single letter may be a variable), nor 'x = 5' or '3 and 4'.
    """
    matches, cleaned = _numbers(text)
    if len(matches) != 1 or cleaned[:matches[0].start()].strip():
        return None
    unit = _EXPONENT_OR_DECORATION.sub("", cleaned[matches[0].end():])
    return _clean_number(matches[0].group()) if not unit or _UNIT_WORD.fullmatch(unit) else None


# ------------------------------------------------------------------ simple LaTeX values (MATH-V)

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id == "pi":
        return math.pi
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            raise OverflowError  # no 10^10^10 that takes minutes to compute
        return _OPERATORS[type(node.op)](left, right)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt"
            and len(node.args) == 1 and not node.keywords):
        return math.sqrt(_evaluate(node.args[0]))
    raise ValueError("not a plain number")


def _latex_value(text: str) -> float | None:
    """The value of a simple LaTeX number ('6.0', '\\frac{1}{2}', '1/2', '2\\sqrt{3}', '3\\pi', '2^{10}'), else None."""
    s = text.lower().replace(" ", "").replace("dfrac", "frac").replace("tfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    previous = None
    while previous != s:  # innermost braces first: \frac{\sqrt{3}}{2}
        previous = s
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
    s = re.sub(r"\\sqrt(\d)", r"sqrt(\1)", s)
    s = s.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    s = re.sub(r"(?<=[\d).])(?=[(a-z])", "*", s.replace("{", "(").replace("}", ")"))  # 2\pi, 3\sqrt{2}, (a)(b)
    try:
        value = _evaluate(ast.parse(s, mode="eval").body)
        return float(value) if math.isfinite(value) else None
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def _as_tuple(text: str) -> tuple[str, tuple] | None:
    """'(1, 2)' or '[a, 3]' (two or more items) as its bracket and items rounded to 2 decimals, as eval_tuple."""
    s = text.strip()
    if len(s) < 2 or s[0] + s[-1] not in ("()", "[]") or "," not in s:
        return None
    items = []
    for item in (part.strip() for part in s[1:-1].split(",")):
        if "infty" in item or item in ("a", "-a"):  # kept as written, as official
            items.append(item)
            continue
        value = _latex_value(item)
        if value is None:
            return None
        items.append(round(value, 2))
    return s[0], tuple(items)


def _mathvision_equal(answer: str, gold: str) -> bool:
    """MATH-V's is_equal: same string (case aside), same tuple, or same value to 2 decimals."""
    answer, gold = answer.lower().strip(), gold.lower().strip()
    if not answer or not gold:
        return False
    if answer == gold:
        return True
    answer_tuple, gold_tuple = _as_tuple(answer), _as_tuple(gold)
    if answer_tuple is not None or gold_tuple is not None:
        return answer_tuple == gold_tuple
    a, g = _latex_value(answer), _latex_value(gold)
    return a is not None and g is not None and round(a, 2) == round(g, 2)


# ------------------------------------------------------------------------------------ MATH-Vision

_MATHV_FLAGS = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")
# Dropped by the official normal form, in its order (after "\\," and spaces).
_MATHV_DROPPED = ("\\text", "\\mbox", "\\left", "\\right", "^{\\circ}", "^\\circ", "{m}^3", "m^3", "{units}", "units",
                  "{km}", "km", "\\!", "\\$", "$", "\\%")


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _mathvision_stated(output: str) -> tuple[str, bool]:
    """The part of an output the official evaluate.py keeps, and whether the output marked it as its answer."""
    text, marked = output.strip(), False
    for c in "ABCDE":
        if text.endswith((f" {c}.", f" ({c}).")) or text.startswith((f"{c}\n", f"({c})\n", f"({c}) {c}\n")):
            text, marked = c, True
    tail = text.split("is ")[-1].rstrip(".")
    if _is_float(tail):
        text, marked = tail, True
    if "oxed{" in text:
        marked = True
        if text.count("oxed{") > 1:
            text = "\\boxed{" + text.split("oxed{")[-1]
    else:
        for flag in _MATHV_FLAGS:
            for spelling in (flag, flag.replace("the", "The")):
                if spelling in text:
                    text, marked = text.split(spelling)[-1].strip().split("\n")[0].split(". ")[0], True
    return text, marked


def _mathvision_normalize(text: str) -> str:
    """The official normal form (find_math_answer and its clean-up), lower case."""
    s = text.lower().replace("{}", "")
    boxed = re.findall(r"oxed\{(.*)\}", s, flags=re.S)  # greedy, as official: to the last closing brace
    if boxed:
        s = boxed[-1]
    close, open_ = s.find("}"), s.find("{")
    if close != -1 and (open_ == -1 or close < open_):  # a brace closed before any opened ends the answer
        s = s.split("}")[0]
    s = s.split("=")[-1].split("\\approx")[-1]
    s = s.replace("\\,", "").replace("∞", "\\infty").replace("+\\infty", "\\infty").replace("\\\\", "\\")
    s = re.sub(r"\s", "", s).replace("bmatrix", "pmatrix")
    for piece in _MATHV_DROPPED:
        s = s.replace(piece, "")
    for c in "abcde":  # "(b)" and "{b}" are the choice b
        s = s.replace(f"({c})", c).replace(f"{{{c}}}", c)
    return s.rstrip(".").lstrip(":").strip()


def mathvision_answer(output: str, options: list[str]) -> str | None:
    """The answer an output gives: a letter A-E for a multiple-choice problem, else the normalized final answer."""
    if not output or not output.strip():
        return None
    stated, marked = _mathvision_stated(output)
    answer = _mathvision_normalize(stated)
    if options:
        letters = string.ascii_uppercase[:len(options)]
        if len(answer) == 1 and answer.upper() in letters:
            return answer.upper()
        for letter, option in zip(letters, options):
            if _mathvision_equal(answer, option) or _mathvision_equal(answer, _mathvision_normalize(option)):
                return letter
        return None
    if _latex_value(answer) is not None or _as_tuple(answer) is not None:
        return answer
    number = number_with_unit(answer)
    if number is not None:
        return number
    if not marked and find_numbers(output):
        return find_numbers(output)[-1]
    return answer or None


def mathvision_correct(output: str, doc: dict) -> bool:
    """Whether an output answers a MATH-V row (fields `answer`, `options`) right."""
    options = list(doc.get("options") or [])
    answer = mathvision_answer(output, options)
    gold = str(doc["answer"]).strip()
    if answer is None:
        return False
    return answer == gold.upper() if options else _mathvision_equal(answer, gold)


# --------------------------------------------------------------------------------------- MathVista

_ANSWER_MARK = re.compile(r"(?:answer|option|choice)\s*(?:is|:)\s*:?", re.I)
_LEADING_LETTER = re.compile(r"\(?([A-Z])(?:\)|(?=[.:,]|$))")  # "B", "(B) 8/11", "B.", "B: text", "B)"
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, as the official `Levenshtein.distance`."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, nested braces included; None when there is none or it is cut off."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for i, ch in enumerate(text[start + len("\\boxed"):]):
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return text[start + len("\\boxed{"):start + len("\\boxed") + i]
    return None


def _marked_answer(response: str) -> tuple[str, bool]:
    """The last \\boxed{} or the line after the last "answer is"/"answer:", and whether one was found; else all."""
    boxed = _last_boxed(response)
    if boxed is not None:
        return boxed.strip(), True
    marks = list(_ANSWER_MARK.finditer(response))
    if marks:
        return response[marks[-1].end():].split("\n")[0].strip(" *`'\""), True
    return response, False


def _choice_said(said: str, choices: list[str]) -> str:
    """A choice letter or option text from the answer part of an output; the text itself when neither shows."""
    bare = said.strip().rstrip(".").strip(" *`'\"").casefold()
    for choice in choices:
        if bare == choice.strip().casefold():
            return choice
    letter = _LEADING_LETTER.match(said)
    if letter:
        return letter.group(1)
    # an option's text as a whole word or number: "8/11" is not in "8/111", nor "1" in "1.5"
    mentioned = [c for c in choices
                 if c.strip() and re.search(r"(?<![\w.])%s(?!\w|\.\d)" % re.escape(c.strip()), said, re.I)]
    if len(mentioned) == 1:
        return mentioned[0]
    letter = re.match(r"\(?([A-Z])\)?\s", said)  # "B because ...": last, as "A square" may be an option's text
    return letter.group(1) if letter and ord(letter.group(1)) - ord("A") < len(choices) else said


def _mathvista_extract(output: str, doc: dict) -> str:
    """The answer text official extract_answer would hand on, with the stand-in for GPT-4 (module docstring)."""
    response = output.strip()
    choices, answer_type = list(doc.get("choices") or []), doc["answer_type"]
    if not response:
        return ""
    if doc["question_type"] == "multi_choice" and response in choices:
        return response
    if answer_type == "integer" and re.fullmatch(r"[-+]?\d+", response):  # official: int(response) succeeds
        return str(int(response))
    if answer_type == "float" and _is_float(response):  # official: float(response) succeeds
        return str(float(response))
    quoted = re.search(r'The answer is "(.*)"\.', response)  # the official quick_extract rule
    if quoted:
        return quoted.group(1)
    said, marked = _marked_answer(response)
    if doc["question_type"] == "multi_choice":
        return _choice_said(said, choices)
    if answer_type == "list":
        lists = _BRACKETED.findall(said) or _BRACKETED.findall(response)
        if lists:
            items = [number_with_unit(item) or item.strip().strip("'\"") for item in lists[-1].split(",")]
        else:
            items = find_numbers(said) if marked else []
        return "[" + ", ".join(items) + "]" if items else ""
    if answer_type in ("integer", "float"):
        value = _latex_value(said.replace("$", ""))
        if value is not None:  # "\frac{1}{2}", "1/2"
            return str(value)
        numbers = find_numbers(said) if marked else []
        numbers = numbers[:1] or find_numbers(response)[-1:]
        return numbers[0] if numbers else ""
    return said


def _mathvista_normalize(extraction: str, doc: dict) -> str | None:
    """Official normalize_extracted_answer; None for an empty extraction (--ignore_empty_extractions)."""
    extraction = extraction.strip()
    if not extraction:
        return None
    if doc["question_type"] == "multi_choice":
        choices = list(doc.get("choices") or [])
        if not choices:
            return None
        in_parentheses = re.findall(r"\(([a-zA-Z])\)", extraction)  # "(b) text" -> "B"
        if in_parentheses:
            extraction = in_parentheses[0].upper()
        letters = string.ascii_uppercase[:len(choices)]
        if len(extraction) == 1 and extraction in letters:
            return choices[letters.index(extraction)]
        return min(choices, key=lambda choice: _edit_distance(extraction, choice))  # first of the nearest
    try:
        if doc["answer_type"] == "integer":
            return str(int(float(extraction)))
        if doc["answer_type"] == "float":
            return str(round(float(extraction), int(doc["precision"])))
    except (TypeError, ValueError, OverflowError):
        return None
    return extraction  # lists as written; free-form text has no official branch


def mathvista_answer(output: str, doc: dict) -> str | None:
    """The normalized answer of an output for a MathVista row (Hub fields), None when it gives none."""
    return _mathvista_normalize(_mathvista_extract(output or "", doc), doc)


def mathvista_correct(output: str, doc: dict) -> bool:
    """Official safe_equal: the normalized answer equals the gold `answer` string."""
    prediction = mathvista_answer(output, doc)
    return prediction is not None and prediction == str(doc["answer"])
