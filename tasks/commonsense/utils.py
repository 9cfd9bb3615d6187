"""Hooks for the commonsense task YAMLs (lm-eval `!function` targets)."""
import re

from harness.pools import load_task_dataset as load  # noqa: F401  (custom_dataset hook)


def boolq_text(doc):
    # The offline mirror (and the DnD/LLM-Adapters setups) have no passage; the Hub copy does.
    passage = (doc.get("passage") or "").strip()
    question = doc["question"].strip()
    if question and not question.endswith("?"):
        question += "?"
    head = f"{passage}\n" if passage else ""
    return f"{head}Question: {question}\nAnswer:"


def boolq_target(doc):
    return 1 if doc["answer"] in (True, "true", "True", 1) else 0


def winogrande_gold(doc):
    return {"1": 0, "2": 1}[str(doc["answer"])]


def winogrande_choices(doc):
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + option for option in (doc["option1"], doc["option2"])]


def winogrande_continuation(doc):
    return doc["sentence"][doc["sentence"].index("_") + 1:].strip()


def hellaswag_choices(doc):
    return [_clean(e) for e in doc["endings"]]


def hellaswag_text(doc):
    label = doc.get("activity_label", "")
    return f"{label}: {_clean(doc['ctx'])}" if label else _clean(doc["ctx"])


def _clean(text):
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


# Gold answer texts, for the pool's leak check (harness/pools.py `answer`).
def lettered_gold(doc):
    """ARC, OpenBookQA: the choice whose letter is the answer key."""
    choices = doc["choices"]
    return choices["text"][choices["label"].index(str(doc["answerKey"]).strip())]


def piqa_gold(doc):
    return (doc["sol1"], doc["sol2"])[int(doc["label"])]


def winogrande_option(doc):
    return doc[f"option{doc['answer']}"]


def hellaswag_gold(doc):
    return doc["endings"][int(doc["label"])]
