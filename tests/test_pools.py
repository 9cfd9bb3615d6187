"""Adaptation pools never contain an evaluated item; carving is seeded and recorded."""
import pytest

from conftest import compose, needs_data
from harness.errors import HarnessError
from harness.pools import _text_key, build_splits

TASKS = ["arc_easy", "arc_challenge", "boolq", "openbookqa", "piqa", "hellaswag", "winogrande"]


@needs_data
@pytest.mark.parametrize("name", TASKS)
def test_pool_is_disjoint_from_eval(name):
    from harness.tasks import TaskHandle

    handle = TaskHandle.from_cfg(compose(f"task={name}").task)
    kwargs = dict(handle.task.config.dataset_kwargs)
    fields = kwargs["dedup_fields"]
    pool, evaluated = handle.pool_docs, handle.eval_docs
    assert len(pool) > 100 and len(evaluated) > 400
    eval_keys = {_text_key(d, fields) for d in evaluated}
    assert not any(_text_key(d, fields) in eval_keys for d in pool)
    # What strategies actually see (prompts, demonstrations) never equals an evaluated prompt.
    eval_prompts = {handle.unlabeled_prompt(d) for d in evaluated}
    assert not any(handle.unlabeled_prompt(d) in eval_prompts for d in pool)
    info = handle.pool_info
    assert info.n_pool == len(pool) and info.n_eval == len(evaluated)
    if info.carved:
        from harness.data import load_split

        source = load_split(kwargs["path"], kwargs["name"], kwargs["eval_split"]).rows
        assert len(set(info.carved_rows)) >= kwargs["pool_size"]
        assert info.n_eval + len(info.carved_rows) == len(source)  # every row is on exactly one side
        carved = set(info.carved_rows)
        assert [r for i, r in enumerate(source) if i not in carved] == evaluated
    prompt, completion = handle.labeled_example(pool[0])
    assert prompt and completion.startswith(" ")


@needs_data
def test_carving_is_seeded_and_leaves_the_rest_for_eval():
    a_pool, a_eval, a_info = build_splits("ybisk/piqa", "default", "validation", pool_size=400, pool_seed=1234)
    b_pool, b_eval, b_info = build_splits("ybisk/piqa", "default", "validation", pool_size=400, pool_seed=1234)
    c_pool, _, c_info = build_splits("ybisk/piqa", "default", "validation", pool_size=400, pool_seed=7)
    assert a_info.carved_rows == b_info.carved_rows != c_info.carved_rows
    assert len(a_pool) == 400 and len(a_eval) == 1838 - 400
    assert a_info.carved and a_info.carve_seed == 1234
    assert all(r not in a_eval for r in a_pool[:50])


@needs_data
@needs_data
def test_winogrande_twins_never_straddle_pool_and_eval():
    from harness.tasks import TaskHandle

    handle = TaskHandle.from_cfg(compose("task=winogrande").task)

    def pair(d):
        return tuple(sorted((d["option1"].lower(), d["option2"].lower())))

    pool_pairs = {pair(d) for d in handle.pool_docs}
    assert not any(pair(d) in pool_pairs for d in handle.eval_docs)
    # The case that leaked before grouping: one word changed, answer flipped.
    twins = [d for d in handle.eval_docs + handle.pool_docs if "surgeon than Maria" in d["sentence"]]
    assert len(twins) == 2 and len({id(d) in map(id, handle.pool_docs) for d in twins}) == 1


@needs_data
def test_eval_subset_is_seeded_and_shared_by_all_strategies():
    from harness.tasks import TaskHandle

    handle = TaskHandle.from_cfg(compose("task=boolq").task)
    first = handle.eval_indices(50, 1234)
    assert first == handle.eval_indices(50, 1234) and len(set(first)) == 50
    assert first != handle.eval_indices(50, 99)
    assert handle.eval_indices(None, 1234) == list(range(len(handle.eval_docs)))


def test_boolq_prompt_with_and_without_passage():
    import importlib.util

    from harness.settings import TASKS_DIR

    spec = importlib.util.spec_from_file_location("cs_utils", TASKS_DIR / "commonsense" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert utils.boolq_text({"question": "is the sky blue"}) == "Question: is the sky blue?\nAnswer:"
    assert utils.boolq_text({"question": "is it", "passage": "The sky."}) == "The sky.\nQuestion: is it?\nAnswer:"
    assert utils.boolq_target({"answer": True}) == 1 and utils.boolq_target({"answer": False}) == 0


def test_missing_data_offline_is_one_clear_error(tmp_path, monkeypatch):
    from harness import data

    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data._CACHE.clear()
    with pytest.raises(HarnessError) as err:
        data.load_split("allenai/ai2_arc", "ARC-Easy", "test")
    message = str(err.value)
    assert "\n" not in message and "ARC-Easy/test" in message and "HARNESS_DATA_DIR" in message


def test_malformed_row_names_split_and_line(tmp_path, monkeypatch):
    from harness import data

    folder = tmp_path / "o" / "d" / "default"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text('{"a": 1}\n{"a": \n')
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    data._CACHE.clear()
    with pytest.raises(HarnessError, match=r"o/d/default/test .*line 2"):
        data.load_split("o/d", "default", "test")


def _arc_data(tmp_path, damage, row: int) -> tuple:
    """A data folder with a few ARC-Easy rows, row `row` of the train split (the pool) changed by `damage`."""
    import json

    from conftest import SHARED_DATA

    source, folder = SHARED_DATA / "allenai/ai2_arc/ARC-Easy", tmp_path / "allenai/ai2_arc/ARC-Easy"
    folder.mkdir(parents=True)
    rows = {}
    for split in ("test", "train"):
        with (source / f"{split}.jsonl").open() as fh:
            rows[split] = [json.loads(next(fh)) for _ in range(8)]
    rows["train"][row] = damage(rows["train"][row])
    for split, split_rows in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))
    return rows["train"][row]


@needs_data
@pytest.mark.parametrize("damage,expected", [
    (lambda r: {**r, "answerKey": "Q"}, "answer key 'Q' is not among its choice labels {labels}"),
    (lambda r: {**r, "choices": {**r["choices"], "text": r["choices"]["text"][:-1]}},
     "{n} choice labels but {m} choice texts"),
    (lambda r: {**r, "choices": {**r["choices"], "label": r["choices"]["label"] + ["Z"]}},
     "{n} choice labels but {m} choice texts"),
])
def test_malformed_pool_rows_are_refused(tmp_path, monkeypatch, damage, expected):
    """Pool rows get the checks eval rows get: a row whose answer is not one of its choices stops the run."""
    from harness import data
    from harness.tasks import TaskHandle

    row = _arc_data(tmp_path, damage, row=5)
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    data._CACHE.clear()
    with pytest.raises(HarnessError) as err:
        TaskHandle.from_cfg(compose("task=arc_easy").task)
    message = str(err.value)
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    assert message.startswith("task arc_easy: malformed row 5 of split allenai/ai2_arc/ARC-Easy/train (local:")
    assert expected.format(labels=labels, n=len(labels), m=len(texts)) in message
    assert message.endswith("fix or re-download that file") and "\n" not in message


@needs_data
def test_carved_pool_rows_are_checked_too(tmp_path, monkeypatch):
    """PIQA's pool is carved from its validation split: a bad label there is refused whichever side it lands."""
    import json

    from harness import data
    from harness.tasks import TaskHandle
    from conftest import SHARED_DATA

    folder = tmp_path / "ybisk/piqa/default"
    folder.mkdir(parents=True)
    with (SHARED_DATA / "ybisk/piqa/default/validation.jsonl").open() as fh:
        rows = [json.loads(next(fh)) for _ in range(12)]
    rows[7]["label"] = 2
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    data._CACHE.clear()
    with pytest.raises(HarnessError, match=r"task piqa: malformed row 7 of split ybisk/piqa/default/validation .*"
                                           r"label 2 is not a choice index 0\.\.1"):
        TaskHandle.from_cfg(compose("task=piqa").task)


def test_a_data_file_without_rows_is_one_clear_error(tmp_path, monkeypatch):
    from harness import data

    folder = tmp_path / "o" / "d" / "default"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text("\n\n")
    (folder / "train.jsonl").write_text('[1, 2]\n')
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    data._CACHE.clear()
    with pytest.raises(HarnessError, match=r"o/d/default/test: .*test.jsonl holds no rows: re-copy that file"):
        data.load_split("o/d", "default", "test")
    with pytest.raises(HarnessError, match=r"o/d/default/train .*line 1\): a JSON list, not an object"):
        data.load_split("o/d", "default", "train")
