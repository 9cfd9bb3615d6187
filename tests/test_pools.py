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
