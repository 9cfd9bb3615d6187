"""The generalization suite (harness/generalization/): deterministic per seed, every gold answer follows from the
training documents and no distractor does (by the symbolic closure, itself checked on hand cases), no test
statement is copied from training, and the tasks load through lm-eval with the split named in the record."""
import pytest
from conftest import compose

from harness.errors import HarnessError

SEMANTIC_SPLITS = ("rephrased", "reversed", "syllogism", "holdout")


def _gen(task, **options):
    from harness.generalization import generate

    return generate(task, **options)


# ------------------------------------------------------------------------------------------ the closure, by hand

def test_syllogism_entailment_on_textbook_cases():
    from harness.generalization.closure import entails

    barbara = [("all", "a", "b"), ("all", "b", "c")]
    assert entails(barbara, ("all", "a", "c")) and not entails(barbara, ("all", "c", "a"))
    # Darii: all b are c, some a are b |- some a are c (and so some c are a)
    darii = [("all", "b", "c"), ("some", "a", "b")]
    assert entails(darii, ("some", "a", "c")) and entails(darii, ("some", "c", "a"))
    # Celarent: no b are c, all a are b |- no a are c
    assert entails([("no", "b", "c"), ("all", "a", "b")], ("no", "c", "a"))
    # undistributed middle: all a are b, all c are b |- nothing about a and c
    middle = [("all", "a", "b"), ("all", "c", "b")]
    assert not any(entails(middle, (q, x, y)) for q in ("all", "some", "no") for x, y in (("a", "c"), ("c", "a")))
    # Darapti (all b are a, all b are c |- some a are c) needs b to have members: existential import
    darapti = [("all", "b", "a"), ("all", "b", "c")]
    assert not entails(darapti, ("some", "a", "c"))
    assert entails(darapti, ("some", "a", "c"), existential_import=True)
    assert entails([("all", "a", "b")], ("some", "a", "b"), existential_import=True)


def test_semantic_closure_inherits_down_the_hierarchy_only():
    from harness.generalization.closure import DOES, DONE_BY, HAS, INCLUDES, TYPE_OF, SemanticClosure

    c = SemanticClosure([(TYPE_OF, "leaf", "mid"), (TYPE_OF, "mid", "root"), (HAS, "root", "red"),
                         (HAS, "leaf", "wet"), (DOES, "mid", "eats", "other"), (TYPE_OF, "kid", "other")])
    assert c.holds((TYPE_OF, "leaf", "root")) and c.holds((INCLUDES, "root", "leaf"))
    assert c.holds((HAS, "leaf", "red")) and not c.holds((HAS, "mid", "wet"))  # down, not up
    assert c.holds((DOES, "leaf", "eats", "other")) and c.holds((DONE_BY, "other", "eats", "leaf"))
    assert not c.holds((DOES, "leaf", "eats", "kid"))  # a relation's object does not pass it to its subtypes
    assert not c.holds((DOES, "root", "eats", "other"))
    assert c.trained((DONE_BY, "other", "eats", "mid")) and not c.trained((DONE_BY, "other", "eats", "leaf"))


def test_comparison_closure_reverses_and_chains():
    from harness.generalization.closure import CMP, ComparisonClosure
    from harness.generalization.reversals import SIDES

    c = ComparisonClosure([(CMP, "a", "brighter", "b"), (CMP, "c", "dimmer", "b")], SIDES)
    assert c.holds((CMP, "b", "dimmer", "a")) and c.holds((CMP, "a", "brighter", "c"))  # reversal; chain via b
    assert c.contradicted((CMP, "b", "brighter", "a")) and not c.holds((CMP, "a", "heavier", "b"))
    assert c.consistent()


# ------------------------------------------------------------------------------------------------- the data

@pytest.mark.parametrize("task, options", [("gen_reversals", {}), ("gen_syllogisms", {}),
                                           *[("gen_semantic", {"split": s}) for s in SEMANTIC_SPLITS]])
def test_rows_are_deterministic_per_seed(task, options):
    from harness.generalization import build

    pool, evaluated, info = build(task, **options)
    again = build(task, **options)
    assert (pool, evaluated) == again[:2] and info.fingerprints == again[2].fingerprints
    other = build(task, **options, seed=1)
    assert pool != other[0] and info.fingerprints != other[2].fingerprints
    assert info.n_pool == len(pool) > 0 and info.n_eval == len(evaluated) > 0
    assert {r["kind"] for r in pool} == {"statement"} and {r["kind"] for r in evaluated} == {"test"}
    assert len({r["id"] for r in pool + evaluated}) == len(pool) + len(evaluated)
    assert all(0 <= r["gold"] < len(r["choices"]) and len(set(r["choices"])) == len(r["choices"]) for r in evaluated)


def test_semantic_splits_share_one_pool():
    from harness.generalization import build

    pools = [build("gen_semantic", split=s)[0] for s in SEMANTIC_SPLITS]
    assert all(p == pools[0] for p in pools)  # so ICL, FT and augmentation see the same training set per split


@pytest.mark.parametrize("task, options", [("gen_reversals", {}), ("gen_syllogisms", {}), ("gen_semantic", {})])
def test_every_gold_follows_from_training_and_no_distractor_does(task, options):
    from harness.generalization.closure import SemanticClosure, SyllogismClosure

    gen = _gen(task, **options)
    closure = gen.closure
    for split, items in gen.items.items():
        assert items, split
        for item in items:
            gold = item.claims[item.gold]
            assert closure.holds(gold), (split, item)
            others = [c for k, c in enumerate(item.claims) if k != item.gold]
            if isinstance(closure, SyllogismClosure):
                # a distractor is wrong whether or not terms are assumed to have members
                assert not any(closure.holds(c, existential_import=True) for c in others), item
            else:
                assert not any(closure.holds(c) for c in others), (split, item)
    if isinstance(closure, SyllogismClosure):
        assert closure.consistent()
    if isinstance(closure, SemanticClosure):
        held = set(gen.words["held_out"])
        # held-out categories are never described: only "x are a type of y" in their parent's document
        for doc in gen.documents:
            assert not any(f[1] in held for f in doc.facts if f[0] != "type_of"), doc
        # a syllogism or holdout item's gold is never a training fact itself
        for split in ("syllogism", "holdout"):
            assert not any(closure.trained(i.claims[i.gold]) for i in gen.items[split])
        assert all(closure.trained(i.claims[i.gold]) for i in gen.items["rephrased"] + gen.items["reversed"])


@pytest.mark.parametrize("task", ["gen_reversals", "gen_syllogisms", "gen_semantic"])
def test_no_test_statement_appears_verbatim_in_training(task):
    import re

    gen = _gen(task)
    words = lambda s: " " + " ".join(re.findall(r"[a-z]+", s.lower())) + " "  # noqa: E731
    training = [words(d.context + " " + d.text) for d in gen.documents]
    for items in gen.items.values():
        for item in items:
            statement = words(item.context + " " + item.choices[item.gold])
            assert not any(statement in doc for doc in training), statement
    if task == "gen_semantic":  # the rephrasing split restates trained facts: the bare fact is in training
        item = gen.items["rephrased"][0]
        fact = words(item.context.removeprefix("It is true that") + " " + item.choices[item.gold])
        assert any(fact in doc for doc in training)


def test_reversal_items_by_hand():
    gen = _gen("gen_reversals", n_facts=5, articles=3)
    assert len(gen.documents) == 15 and len(gen.items["reversed"]) == 5
    fact = gen.documents[0].facts[0]
    _, x, adjective, y = fact
    assert sum(1 for d in gen.documents if d.facts == (fact,)) == 3  # three articles, three openings
    assert len({d.context for d in gen.documents if d.facts == (fact,)}) == 3
    from harness.generalization.reversals import CONVERSE

    (item,) = [i for i in gen.items["reversed"] if x in i.choices[0] and y in i.choices[0]]
    assert item.choices[item.gold] == f"{y} are {CONVERSE[adjective]} than {x}."
    assert item.choices[1 - item.gold] == f"{y} are {adjective} than {x}."


def test_nonsense_words_are_not_single_tokens_of_the_model():
    import random

    import torch

    from harness.generalization.words import WordSource
    from harness.models import load_model

    tok = load_model(compose("model=smollm2-135m").model, torch.device("cpu"), torch.float32).tokenizer
    words = WordSource(random.Random(0)).take(400)
    assert len(set(words)) == 400
    assert not any(v.startswith(w) for w in words for v in words if v != w)  # no name starts with another
    assert all(len(tok(" " + w).input_ids) > 1 for w in words)


def test_each_pool_fits_smollm2s_window_for_full_context_icl():
    import torch

    from harness.generalization import build
    from harness.models import load_model

    tok = load_model(compose("model=smollm2-135m").model, torch.device("cpu"), torch.float32).tokenizer
    for task in ("gen_reversals", "gen_syllogisms", "gen_semantic"):
        pool = build(task)[0]
        n = len(tok("\n".join(r["context"] + " " + r["text"] for r in pool)).input_ids)
        assert 1000 < n < 7000, (task, n)  # the window is 8192; the rest is left for the test item


# ------------------------------------------------------------------------------------------ options and loading

@pytest.mark.parametrize("task, options, message", [
    ("gen_semantic", {"split": "bogus"}, "unknown split 'bogus': use one of rephrased, reversed, syllogism, holdout"),
    ("gen_reversals", {"n_facts": 0}, "n_facts=0"),
    ("gen_reversals", {"colour": 1}, "unknown dataset option(s) colour"),
    ("gen_syllogisms", {"n_problems": "many"}, "must be an integer"),
    ("gen_semantic", {"n_roots": 1}, "use n_roots >= 2"),
])
def test_bad_options_are_one_line_errors(task, options, message):
    from harness.generalization import build

    with pytest.raises(HarnessError) as error:
        build(task, **options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_suite_task_loads_through_lm_eval_with_its_split_recorded():
    from harness.generalization import build
    from harness.tasks import TaskHandle

    handle = TaskHandle.from_cfg(compose("task=gen_semantic_holdout").task)
    pool, evaluated, _ = build("gen_semantic", split="holdout")
    assert [d["id"] for d in handle.pool_docs] == [r["id"] for r in pool]
    assert [d["id"] for d in handle.eval_docs] == [r["id"] for r in evaluated]
    info = handle.pool_info.to_dict()
    assert info["eval_split"] == "holdout" and info["options"]["split"] == "holdout"
    assert "generated:gen_semantic:holdout" in info["fingerprints"]
    doc = handle.eval_docs[0]
    # scored as context + " " + choice, the options not in the prompt
    assert handle.unlabeled_prompt(doc) == doc["context"]
    prompt, completion = handle.labeled_example(handle.pool_docs[0])
    assert prompt == pool[0]["context"] and completion == " " + pool[0]["text"]


def test_an_unknown_split_in_the_task_config_stops_the_run_without_a_record(tmp_path, capsys):
    from harness.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["run", "model=tiny-random", "task=gen_semantic_holdout", "task.dataset_options.split=bogus",
              f"runs_dir={tmp_path}", "progress=false"])
    assert exit_.value.code not in (0, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unknown split 'bogus'" in errors[0], errors
    assert not list(tmp_path.rglob("record.json"))
