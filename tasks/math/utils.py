"""Hooks for the math task YAMLs (lm-eval `!function` targets); the logic is in harness/answers.py."""
from harness.answers import (gsm8k_extract, gsm8k_gold, last_boxed, math_answer, math_equal, math_verify_outputs,
                             minerva_exact_match, minerva_reference)
from harness.errors import HarnessError
from harness.pools import checked_loader


def _gsm8k_row(row):
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        return "no question text"
    try:
        gsm8k_gold(str(row.get("answer", "")))
    except ValueError as exc:
        return str(exc)
    return None


def _math_row(row):
    if not isinstance(row.get("problem"), str) or not row["problem"].strip():
        return "no problem text"
    solution = str(row.get("solution", ""))
    if last_boxed(solution) is None or minerva_reference(solution) is None:
        return "its solution has no readable \\boxed{} answer"
    return None


load_gsm8k = checked_loader("gsm8k", _gsm8k_row)
load_math = checked_loader("math", _math_row)


def gsm8k_results(doc, results):
    try:
        gold = gsm8k_gold(doc["answer"])
    except (KeyError, ValueError) as exc:
        raise HarnessError(f"gsm8k: malformed row {doc.get('question', '')[:60]!r}: {exc}; fix the data file") from None
    strict, flexible = gsm8k_extract(results[0])
    return {"exact_match": float(flexible == gold), "strict_match": float(strict == gold)}


def math_results(doc, results):
    """exact_match_minerva: lm-eval 0.4.13 minerva_math's verdict; exact_match_lenient: ours (README, MATH)."""
    solution = doc.get("solution", "")
    gold = last_boxed(solution)
    if gold is None or minerva_reference(solution) is None:
        raise HarnessError(f"math: row {doc.get('problem', '')[:60]!r} has no \\boxed answer in its solution; "
                           "fix the data file")
    output = results[0]
    return {"exact_match_minerva": float(minerva_exact_match(output, solution)),
            "exact_match_lenient": float(math_equal(math_answer(output), gold)),
            "math_verify": float(math_verify_outputs(output, solution))}
