"""Hooks for the commonsense task YAMLs (lm-eval `!function` targets)."""
import re

from harness.pools import checked_loader


# Row checks (custom_dataset hooks): a row the templates below cannot score, or whose gold answer is not one of
# its choices, stops the run with one line, whether it is an evaluated row or a pool row.
def _text(row, *fields):
    missing = [f for f in fields if not isinstance(row.get(f), str) or not row[f].strip()]
    return f"missing or empty field(s) {', '.join(missing)}" if missing else None


def _lettered_row(question, strip_key):
    """ARC and OpenBookQA: parallel lists of choice labels and texts, and an answer key among the labels."""
    def check(row):
        problem = _text(row, question)
        if problem:
            return problem
        choices = row.get("choices")
        labels = choices.get("label") if isinstance(choices, dict) else None
        texts = choices.get("text") if isinstance(choices, dict) else None
        if not isinstance(labels, list) or not isinstance(texts, list) or len(labels) < 2:
            return "choices is not {label: [...], text: [...]} with at least two choices"
        if len(labels) != len(texts):
            return f"{len(labels)} choice labels but {len(texts)} choice texts"
        if not all(isinstance(t, str) for t in texts):
            return "a choice text is not a string"
        key = row.get("answerKey")
        key = key.lstrip() if strip_key and isinstance(key, str) else key
        if key not in labels:
            return f"answer key {row.get('answerKey')!r} is not among its choice labels {labels}"
        return None
    return check


def _index_row(row, field, n):
    try:
        value = int(str(row.get(field)).strip())
    except ValueError:
        value = None
    return None if value in range(n) else f"{field} {row.get(field)!r} is not a choice index 0..{n - 1}"


def _boolq_row(row):
    if row.get("answer") not in (True, False, "true", "false", "True", "False", 0, 1):
        return f"answer {row.get('answer')!r} is not true or false"
    return _text(row, "question")


def _piqa_row(row):
    return _text(row, "goal", "sol1", "sol2") or _index_row(row, "label", 2)


def _hellaswag_row(row):
    endings = row.get("endings")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        return "endings is not a list of at least two strings"
    return _text(row, "ctx") or _index_row(row, "label", len(endings))


def _winogrande_row(row):
    problem = _text(row, "sentence", "option1", "option2")
    if problem:
        return problem
    if "_" not in row["sentence"]:
        return "its sentence has no _ blank for the options"
    return None if str(row.get("answer")) in ("1", "2") else f"answer {row.get('answer')!r} is not 1 or 2"


load_arc_easy = checked_loader("arc_easy", _lettered_row("question", strip_key=False))
load_arc_challenge = checked_loader("arc_challenge", _lettered_row("question", strip_key=False))
load_openbookqa = checked_loader("openbookqa", _lettered_row("question_stem", strip_key=True))
load_boolq = checked_loader("boolq", _boolq_row)
load_piqa = checked_loader("piqa", _piqa_row)
load_hellaswag = checked_loader("hellaswag", _hellaswag_row)
load_winogrande = checked_loader("winogrande", _winogrande_row)


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
