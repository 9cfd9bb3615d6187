"""Answer extraction and normalization for the math tasks (GSM8K, MATH).

GSM8K follows lm-eval's two readings of an output: the number after "####" (strict) and, failing
that, the number after "The answer is" or the last number of the output (flexible). MATH has two
graders built on the Minerva protocol (Lewkowycz et al. 2022, appendix D): lm-eval 0.4.13's
minerva_math exactly (`minerva_exact_match`), and our more lenient reading (`math_answer` +
`math_equal`). Both normalize with the paper's rules as lm-eval 0.4.13 corrected them.
"""
from __future__ import annotations

import importlib
import re
import signal
import threading
from contextlib import contextmanager

# ---------------------------------------------------------------------------------------- GSM8K

_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")
_STRICT = re.compile(r"####\s*(-?\$?\s?[\d.,]+)")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*(-?[\d.,]*\d)", re.I)


def normalize_number(text: str | None) -> str | None:
    """A number as a canonical string: '$1,000.00' -> '1000', '-3.50' -> '-3.5'; None if not a number."""
    if text is None:
        return None
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = float(s)
    except ValueError:
        return None
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def gsm8k_gold(answer: str) -> str:
    """The reference number of a GSM8K row (the text after its last '####')."""
    if "####" not in answer:
        raise ValueError("GSM8K answer has no '####' line")
    gold = normalize_number(answer.rsplit("####", 1)[1])
    if gold is None:
        raise ValueError(f"GSM8K answer after '####' is not a number: {answer.rsplit('####', 1)[1].strip()!r}")
    return gold


def gsm8k_extract(output: str) -> tuple[str | None, str | None]:
    """(strict, flexible) answers read from a generated solution, normalized; None where absent."""
    m = _STRICT.search(output)
    strict = normalize_number(m.group(1)) if m else None
    if strict is not None:
        return strict, strict
    said = _ANSWER_IS.findall(output)
    if said:
        return None, normalize_number(said[-1])
    numbers = [n for n in (normalize_number(x) for x in _NUMBER.findall(output)) if n is not None]
    return None, numbers[-1] if numbers else None


# ----------------------------------------------------------------------------------------- MATH
#
# Two graders share Minerva's normal form. `exact_match_minerva` is lm-eval 0.4.13's minerva_math
# verdict, rule for rule; `exact_match_lenient` is ours: it reads many more outputs as answered (the
# last "Final Answer" sentence, with or without "I hope it is correct.", else the last \boxed{}) and
# compares with math-verify, so on the same generations it usually scores higher than lm-eval.

_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""),
                  ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
# Unit words and decorations the paper strips; alphabetic ones are words, the others literal strings.
_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
            "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
            "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}",
            "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}",
            r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots"]
# A whole unit word not right after a backslash: 'ft' never hits '\left', nor 'cm' a command '\cm'.
_UNIT_WORD = re.compile(r"(?<!\\)\b(?:%s)\b" % "|".join(w for w in _REMOVED if w.isalpha()))
_COMMAND = re.compile(r"(\\[A-Za-z]+)")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+")  # 1,000 and -12,345,678; not the list 1,3


def _outside_commands(text: str, fn) -> str:
    """Apply fn to the parts of text that are not LaTeX command names (so 'ft' never hits '\\left')."""
    parts = _COMMAND.split(text)
    return "".join(p if i % 2 else fn(p) for i, p in enumerate(parts))


def normalize_math_answer(answer: str) -> str:
    """Minerva's normal form of a final answer, as lm-eval 0.4.13 computes it.

    The rules of appendix D of Lewkowycz et al. 2022 with lm-eval 0.4.13's corrections
    (`lm_eval/tasks/minerva_math/utils.py`, `normalize_final_answer`): unit words are removed as whole
    words before spaces are dropped and outside command names after, and commas are dropped only
    from a number with thousands separators (the paper's rule fused the list '1,3' into '13').
    Nothing is stripped at the ends, as in lm-eval.
    """
    s = _UNIT_WORD.sub("", answer.split("=")[-1])  # unit words while spaces still separate them
    for before, after in _SUBSTITUTIONS:
        s = s.replace(before, after)
    for expr in _REMOVED:  # then glued-on units and decorations, in the paper's order
        s = _outside_commands(s, lambda p, e=expr: p.replace(e, "")) if expr.isalpha() else s.replace(expr, "")
    s = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$", s)  # the first $...$ span only
    for wrapper in ("text", "textbf", "overline"):
        s = re.sub(r"\\%s\{(.*?)\}" % wrapper, r"\1", s)
    s = re.sub(r"\\boxed\{(.*)\}", r"\1", s)
    s = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", s)  # \frac12 -> \frac{1}{2}
    s = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", r"\1\2{\3}", s)  # \sqrt[3]8 -> \sqrt[3]{8}
    s = re.sub(r"(sqrt)(?!\[)([^{])", r"sqrt{\2}", s)  # \sqrt2 -> \sqrt{2}
    s = s.replace("$", "")
    return s.replace(",", "") if _THOUSANDS.fullmatch(s) else s


# ------------------------------------------------------------- MATH, ours: exact_match_lenient

def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}, or '\\boxed 5') in the text."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    after = rest[len("\\boxed"):] if rest.startswith("\\boxed") else rest[len("\\fbox"):]
    if after.startswith(" "):  # "\boxed 5$": one token, up to the next '$' or space
        token = re.split(r"[$\s]", after.strip(), maxsplit=1)[0]
        return token or None
    if not after.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(after):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return after[1:i]
    return None  # unbalanced: the output was cut inside the box


_FINAL = re.compile(r"Final Answer: The final answer is(.*?)(?:\. I hope it is correct|\n|$)", re.S)


def math_answer(output: str) -> str | None:
    """The final answer a MATH solution states, read leniently: the last closing sentence, else the last box."""
    found = _FINAL.findall(output)
    if found and found[-1].strip():
        stated = found[-1].strip()
        return last_boxed(stated) or stated
    return last_boxed(output)


def _verify(gold_text: str, pred_text: str) -> bool:
    """math-verify's verdict; a parser failure means "not shown equal", never a crash."""
    try:
        from math_verify import parse, verify
    except ImportError:  # math-verify is a dependency; without it only normal forms are compared
        return False
    # math-verify times out with SIGALRM, which only the main thread may use: elsewhere, no time-out.
    main = threading.current_thread() is threading.main_thread()
    parse_kw, verify_kw = ({}, {}) if main else ({"parsing_timeout": None}, {"timeout_seconds": None})
    try:
        gold, pred = parse(gold_text, **parse_kw), parse(pred_text, **parse_kw)
        return bool(gold and pred and verify(gold, pred, **verify_kw))
    except Exception:
        return False


def math_equal(pred: str | None, gold: str) -> bool:
    """Normalized answers are equal as strings, or math-verify shows them symbolically equal."""
    if pred is None:
        return False
    a, b = normalize_math_answer(pred).strip(), normalize_math_answer(gold).strip()
    return a == b or (bool(a) and _verify(f"${b}$", f"${a}$"))


def math_verify_outputs(output: str, solution: str) -> bool:
    """math-verify's own reading: the whole reference solution against the whole output."""
    return _verify(solution, output)


# -------------------------------------------- MATH, lm-eval 0.4.13's minerva_math: exact_match_minerva
#
# Written from lm_eval/tasks/minerva_math/utils.py (lm-eval 0.4.13): `get_unnormalized_answer`,
# `last_boxed_only_string` + `remove_boxed`, `normalize_final_answer` (above) and `is_equiv`. That
# module cannot be imported beside Hydra: it asserts antlr4-python3-runtime 4.11, and sympy's LaTeX
# parser, which `is_equiv` calls, refuses any other runtime, while Hydra pins 4.9.3. So the rules are
# restated here and `is_equiv` runs sympy's own generated parser and converter on the 4.9 runtime.

MINERVA_INVALID = "[invalidanswer]"
# lm-eval's pattern, dots unescaped (each matches any character but a newline): the first sentence
# on one line that ends "I hope it is correct", which the output's end supplies once, right after it.
_MINERVA_FINAL = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")


def minerva_stated_answer(output: str) -> str:
    """The answer lm-eval's minerva_math reads from an output, or '[invalidanswer]' (not normalized).

    Only the closing sentence counts, the first one that ends "I hope it is correct." (the end of the
    output counts as that ending), and the one character before " I hope" is dropped, meant to be
    the sentence's period but whatever it is ('$', '!'); a \\boxed{} answer alone is invalid.
    """
    found = _MINERVA_FINAL.search(output + "I hope it is correct.")
    return found.group(1).strip() if found else MINERVA_INVALID


def minerva_reference(solution: str) -> str | None:
    """The reference answer lm-eval's minerva_math takes from a MATH solution (not normalized).

    Its last \\boxed{...}; or, when the text has '\\boxed ' anywhere, what follows the last
    '\\boxed ' up to the next '$'. None where lm-eval's extraction fails (no box, unbalanced braces,
    only \\fbox{}), rows its task cannot load.
    """
    if "\\boxed " in solution:
        return solution.split("\\boxed ")[-1].split("$")[0]
    start = solution.rfind("\\boxed")
    if start < 0:
        return None
    depth = 0
    for end in range(start, len(solution)):
        depth += solution[end] == "{"
        if solution[end] == "}":
            depth -= 1
            if depth == 0:
                box = solution[start:end + 1]
                return box[len("\\boxed{"):-1] if box.startswith("\\boxed{") else None
    return None


@contextmanager
def _time_limit(seconds: int):
    """TimeoutError after `seconds`, by SIGALRM in the main thread; no limit elsewhere."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


_LATEX_LOCK = threading.Lock()
_LATEX_CLASSES: list = []  # [lexer, parser] once loaded


def _sympy_latex_classes():
    """sympy's generated ANTLR lexer and parser for LaTeX, on whatever antlr4 runtime is installed.

    sympy generated them with ANTLR 4.11, whose serialized grammar (ATN format 4) the 4.9 runtime's
    reader rejects, though the runtime runs them. So, on a runtime older than 4.10, they are loaded
    with a reader of format 4 made of the 4.9 reader's own steps (format 4 changed the encoding only:
    no UUID, plain integers, one table of sets). Checked against antlr4 4.11.1 on the 10,000 raw and
    normalized MATH test answers (identical sympy expressions, identical errors) and on 7,800 scored
    outputs (identical verdicts); tests/test_minerva.py reruns a sample where a 4.11 runtime is given.
    """
    with _LATEX_LOCK:
        if _LATEX_CLASSES:
            return _LATEX_CLASSES
        import antlr4
        from antlr4.atn import ATNDeserializer as reader_module

        reader = reader_module.ATNDeserializer
        if reader_module.SERIALIZED_VERSION < 4:
            class FormatFourReader(reader):
                def deserialize(self, data):
                    if isinstance(data, str):  # format 3, from an older ANTLR
                        return super().deserialize(data)
                    self.data, self.pos = list(data), 0
                    if self.readInt() != 4:
                        raise ValueError("not a format-4 serialized ATN")
                    atn = self.readATN()
                    self.readStates(atn)
                    self.readRules(atn)
                    self.readModes(atn)
                    sets = []
                    self.readSets(atn, sets, self.readInt)
                    self.readEdges(atn, sets)
                    self.readDecisions(atn)
                    self.readLexerActions(atn)
                    self.markPrecedenceDecisions(atn)
                    self.verifyATN(atn)
                    if self.deserializationOptions.generateRuleBypassTransitions \
                            and atn.grammarType == reader_module.ATNType.PARSER:
                        self.generateRuleBypassTransitions(atn)
                        self.verifyATN(atn)
                    return atn

            antlr4.ATNDeserializer = FormatFourReader  # the generated modules read it at import
        try:
            lexer = importlib.import_module("sympy.parsing.latex._antlr.latexlexer").LaTeXLexer
            parser = importlib.import_module("sympy.parsing.latex._antlr.latexparser").LaTeXParser
        finally:
            antlr4.ATNDeserializer = reader
        # sympy's converter reads token constants from these module globals, which its own import of
        # the parser (failed on this runtime) would have set.
        from sympy.parsing.latex import _parse_latex_antlr as converter
        if converter.LaTeXLexer is None or converter.LaTeXParser is None:
            converter.LaTeXLexer, converter.LaTeXParser = lexer, parser

        class Lexer(lexer):
            def checkVersion(self, toolVersion):  # 4.11.1 vs 4.9.3: a printed warning per instance
                pass

        class Parser(parser):
            def checkVersion(self, toolVersion):
                pass

        _LATEX_CLASSES[:] = [Lexer, Parser]
        return _LATEX_CLASSES


def _latex_to_sympy(text: str):
    """sympy's `parse_latex(text)` (ANTLR backend, not strict), without its runtime-version check."""
    import antlr4
    from antlr4.error.ErrorListener import ErrorListener
    from sympy.parsing.latex._parse_latex_antlr import convert_relation
    from sympy.parsing.latex.errors import LaTeXParsingError

    class RaiseOnError(ErrorListener):
        def syntaxError(self, recognizer, offending, line, column, msg, e):
            raise LaTeXParsingError(f"{msg} at column {column} of {text!r}")

    lexer_class, parser_class = _sympy_latex_classes()
    lexer = lexer_class(antlr4.InputStream(text.strip()))
    lexer.removeErrorListeners()
    lexer.addErrorListener(RaiseOnError())
    parser = parser_class(antlr4.CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(RaiseOnError())
    return convert_relation(parser.math().relation())


def minerva_equivalent(pred: str, gold: str) -> bool:
    """lm-eval's `is_equiv` on two normalized answers: equal strings, or sympy simplifies their difference to 0.

    Any failure (unparseable LaTeX, a relation or set that cannot be subtracted, over 5 s) is "not
    equal". Outside the main thread there is no time limit (lm-eval's SIGALRM would fail there and
    score every pair that needs sympy as wrong).
    """
    if pred and pred == gold:  # tuples and intervals do not parse: equal strings must not need to
        return True
    import sympy

    try:
        with _time_limit(5):
            return bool(sympy.simplify(_latex_to_sympy(pred) - _latex_to_sympy(gold)) == 0)
    except ImportError:
        raise
    except Exception:
        return False


def minerva_exact_match(output: str, solution: str) -> bool:
    """lm-eval 0.4.13 minerva_math's `exact_match` for one output against one MATH reference solution."""
    reference = minerva_reference(solution)
    if reference is None:
        raise ValueError("the solution has no \\boxed{} answer lm-eval's minerva_math can read")
    return minerva_equivalent(normalize_math_answer(minerva_stated_answer(output)),
                              normalize_math_answer(reference))
