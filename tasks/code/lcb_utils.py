"""Hooks for tasks/code/livecodebench.yaml (lm-eval `!function` targets).

Data, grading and the pool rule live in harness/livecodebench/. Here: the prompt, the answer a
demonstration shows, and scoring. Hub rows carry no reference solution, so a LiveCodeBench pool
cannot supply demonstrations or labeled training examples. Asking for them raises an error rather
than silently showing empty answers. A row with a `reference_solution` field (the test fixtures have
one) can be a demonstration.
"""
from lm_eval.api.samplers import ContextSampler

from harness.codeeval import GRADES, REPORTED_KS, extract_code, pass_at_k_metrics
from harness.errors import HarnessError
from harness.livecodebench import DEFAULT_GRADING, extract_code_lcb, grade_samples
from harness.livecodebench import load_task_dataset as load  # noqa: F401  (custom_dataset hook)

_NO_LABELS = ("livecodebench: its problems come without reference solutions, so it has no labeled "
              "examples: run it zero-shot (num_fewshot 0) with a strategy that needs no labels "
              "(base, or one that uses unlabeled prompts or the description)")


def doc_to_text(doc: dict) -> str:
    """LCB's generic prompt layout (question, format, answer) in this harness's own words."""
    head = ("You are given a programming problem. Write a correct, efficient Python 3 solution "
            "that passes all of its hidden tests.\n\n"
            f"### Question:\n{doc['question_content'].strip()}\n\n")
    if doc.get("starter_code"):
        form = ("### Format: Complete the starter code below. Answer with the whole solution in one "
                f"```python block.\n```python\n{doc['starter_code'].rstrip()}\n```\n\n")
    else:
        form = ("### Format: Write a complete program that reads the input from standard input and "
                "writes the answer to standard output (do not hard-code the sample tests). Answer "
                "with the program in one ```python block.\n```python\n# your code here\n```\n\n")
    return head + form + "### Answer: (one ```python block)\n\n"


def doc_to_target(doc: dict) -> str:
    """A demonstration's answer: the reference solution, fenced as the prompt asks.

    Evaluated rows have none and get "" (lm-eval logs a target for every sample). A pool row
    without a reference raises, because a demonstration or training example with an empty
    answer would be silently wrong.
    """
    reference = doc.get("reference_solution")
    if reference:
        return f"```python\n{reference.strip()}\n```"
    if doc.get("harness_split") == "pool":
        raise HarnessError(_NO_LABELS)
    return ""


class ReferenceSampler(ContextSampler):
    """Draws demonstrations only from pool rows that have a reference solution, or says why it can't."""

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        if n <= 0:
            return []
        labeled = [d for d in (df or self.fewshot_docs()) if d.get("reference_solution")]
        if len(labeled) < n:
            raise HarnessError(f"{_NO_LABELS} (asked for {n} demonstrations, {len(labeled)} available)")
        return super().sample(n, eval_doc=eval_doc, df=labeled, **kwargs)


def process_results(doc: dict, results: list) -> dict[str, float]:
    """Grade each of the n generations of one problem (the keep-all filter of _code_template_yaml hands
    them over as one list); pass@k for the k that n allows.

    The code is taken from each answer the way the document's grading mode says: lcb_runner's way
    (between the last two ``` lines) or the last fenced block.
    """
    lcb_runner = (doc.get("grading_mode") or DEFAULT_GRADING) == "lcb_runner"
    extract = extract_code_lcb if lcb_runner else extract_code
    grades = grade_samples(doc, [extract(str(g)) for g in results[0]])
    GRADES.log(doc, grades)
    return pass_at_k_metrics([g["passed"] for g in grades], REPORTED_KS)
