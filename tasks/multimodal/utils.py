"""Hooks for the multimodal task YAMLs (lm-eval `!function` targets): loading with images, prompts, scoring.

Rows keep the Hub's fields. An item's image is a file: beside the offline .jsonl (`image`, relative to its
folder), or the PNG that harness/data.py saved from the Hub's decoded image (`decoded_image`). The loader adds
`image_file` (absolute) to each row and checks, before any compute, that every image exists and is readable.
The answer rules are in harness/vision_answers.py.
"""
from pathlib import Path

from harness.data import load_split
from harness.errors import HarnessError
from harness.pools import build_splits, pool_info_for
from harness.vision import IMAGE_PLACEHOLDER, load_image
from harness.vision_answers import mathvision_answer, mathvision_correct, mathvista_answer, mathvista_correct

_SPLIT_KEYS = {"path", "name", "eval_split", "pool_split", "pool_size", "pool_seed", "dedup_fields", "group_fields",
               "answer", "group_overlap"}
LETTERS = "ABCDEFGHIJ"


def image_file(row: dict, folder: Path | None) -> Path | None:
    decoded = row.get("decoded_image")
    if isinstance(decoded, str) and decoded:
        return Path(decoded)
    image = row.get("image")
    if isinstance(image, str) and image:
        return Path(image) if Path(image).is_absolute() or folder is None else folder / image
    return None


def _image_loader(task: str, check):
    """A `custom_dataset` hook: the pool and eval splits (harness/pools.py), each row checked (`check`) and its
    image found and opened once, so that a missing or unreadable image stops the run before any work."""
    import datasets
    from PIL import Image, UnidentifiedImageError

    def load(**kwargs):
        options = {k: v for k, v in kwargs.items() if k in _SPLIT_KEYS}
        loaded = load_split(options["path"], options.get("name"), options["eval_split"])
        folder = Path(loaded.source[len("local:"):]).parent if loaded.source.startswith("local:") else None
        files = {}
        for i, row in enumerate(loaded.rows):
            where = f"task {task}: row {i} (id {row.get('id', row.get('pid', '?'))}) of {loaded.ref}"
            problem = check(row)
            if problem:
                raise HarnessError(f"{where} is malformed ({problem}): fix or re-download the data file")
            path = image_file(row, folder)
            if path is None:
                raise HarnessError(f"{where} names no image: fix the data file (every item needs one)")
            if not path.is_file():
                raise HarnessError(f"{where}: its image {path} does not exist: copy the dataset's images/ folder "
                                   f"beside {loaded.source.removeprefix('local:')} (or load it from the Hub)")
            try:
                with Image.open(path) as img:
                    img.verify()
            except (OSError, UnidentifiedImageError, SyntaxError) as exc:
                raise HarnessError(f"{where}: its image {path} is not a readable image ({exc}): re-copy that file") \
                    from None
            files[id(row)] = str(path)
        pool, evaluated, _ = build_splits(**options)
        with_files = lambda rows: [{**r, "image_file": files[id(r)]} for r in rows]  # noqa: E731
        return datasets.DatasetDict({"pool": datasets.Dataset.from_list(with_files(pool)),
                                     "eval": datasets.Dataset.from_list(with_files(evaluated))})

    load.pool_info = pool_info_for
    return load


def doc_to_image(doc):
    return [load_image(doc.get("image_file"), f"item {doc.get('id', doc.get('pid', '?'))}")]


def _question(doc) -> str:
    """The question with the dataset's own image markers (<image1>, ...) dropped: the image is shown first."""
    import re

    return re.sub(r"\s*<image\d*>\s*", " ", str(doc["question"])).strip()


# --- MathVision (Wang et al. 2024, MATH-V): 5-option multiple choice (options often only in the image) or free form


def _mathvision_row(row):
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        return "no question text"
    if not str(row.get("answer", "")).strip():
        return "no answer"
    if not isinstance(row.get("options"), list):
        return "options is not a list"
    return None


load_mathvision = _image_loader("mathvision", _mathvision_row)


def mathvision_prompt(doc) -> str:
    options = [str(o) for o in doc.get("options") or []]
    text = f"{IMAGE_PLACEHOLDER}\n{_question(doc)}"
    if options:
        listed = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
        return (f"{text}\nChoices:\n{listed}\nAnswer with the letter of the correct choice, as "
                f"\"The answer is (X).\"")
    return f"{text}\nGive the final answer as \"The answer is X.\""


def mathvision_target(doc) -> str:
    answer = str(doc["answer"]).strip()
    return f"The answer is ({answer})." if doc.get("options") else f"The answer is {answer}."


def mathvision_results(doc, results):
    output = results[0]
    return {"accuracy_lenient": float(mathvision_correct(output, doc)),
            "answered": float(mathvision_answer(output, list(doc.get("options") or [])) is not None)}


# --- MathVista (Lu et al. 2024): multi_choice or free_form, with answer types integer/float/text/list


def _mathvista_row(row):
    for name in ("question", "query", "answer", "question_type", "answer_type"):
        if not str(row.get(name) or "").strip():
            return f"no {name}"
    if row["question_type"] not in ("multi_choice", "free_form"):
        return f"question_type {row['question_type']!r} is neither multi_choice nor free_form"
    if row["question_type"] == "multi_choice" and not row.get("choices"):
        return "a multi_choice question without choices"
    return None


load_mathvista = _image_loader("mathvista", _mathvista_row)


def mathvista_prompt(doc) -> str:
    """MathVista's own `query` (its hint, the question and its choices), after the image."""
    return f"{IMAGE_PLACEHOLDER}\n{str(doc['query']).strip()}"


def mathvista_target(doc) -> str:
    return f"The answer is {str(doc['answer']).strip()}."


def mathvista_results(doc, results):
    output = results[0]
    return {"accuracy_rules": float(mathvista_correct(output, doc)),
            "answered": float(mathvista_answer(output, doc) is not None)}
