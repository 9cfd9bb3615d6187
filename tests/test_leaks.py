"""No evaluated item leaks into an adaptation pool: exact checks, and every task's pool checked with them."""
import random

import pytest

from conftest import compose, needs_data
from harness.leaks import contained, near_duplicates, ngrams


def test_ngrams_and_jaccard_by_hand():
    # 10 characters, n=8: three 8-grams each; two shared, four in the union -> 0.5.
    assert ngrams("abcdefghij") == {"abcdefgh", "bcdefghi", "cdefghij"}
    assert ngrams("  ABCDEFGH\n ") == {"abcdefgh"}  # lower-cased, whitespace collapsed and trimmed
    assert [round(p.score, 6) for p in near_duplicates(["abcdefghij"], ["abcdefghik"], threshold=0.5)] == [0.5]
    assert near_duplicates(["abcdefghij"], ["abcdefghik"], threshold=0.51) == []
    # Identical after normalization: Jaccard 1.
    assert [(p.left, p.right, p.score) for p in near_duplicates(["The  Cat sat down."], ["x", "the cat SAT down."])] \
        == [(0, 1, 1.0)]


def _brute_near(left, right, threshold):
    out = set()
    for i, a in enumerate(left):
        for j, b in enumerate(right):
            ga, gb = ngrams(a), ngrams(b)
            if ga and gb and len(ga & gb) / len(ga | gb) >= threshold:
                out.add((i, j))
    return out


def test_near_duplicates_equal_an_all_pairs_search():
    rng = random.Random(0)
    words = "the a cat dog sat ran on under mat tree big small red".split()
    base = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(60)]
    # Mutate copies a little so that every level of similarity occurs.
    other = []
    for text in base[:40]:
        w = text.split()
        for _ in range(rng.randint(0, 3)):
            w[rng.randrange(len(w))] = rng.choice(words)
        other.append(" ".join(w))
    other += base[40:]
    for threshold in (0.5, 0.8, 0.95):
        found = {(p.left, p.right) for p in near_duplicates(base, other, threshold)}
        assert found == _brute_near(base, other, threshold)
        assert found  # the search space holds pairs at every threshold tried


def test_contained_equals_a_substring_search():
    rng = random.Random(1)
    alphabet = "ab c"
    hay = ["".join(rng.choice(alphabet) for _ in range(rng.randint(10, 200))) for _ in range(50)]
    needles = [h[s:s + rng.randint(15, 40)] for h in hay[:30] for s in [rng.randint(0, max(0, len(h) - 40))]]
    needles += ["".join(rng.choice(alphabet) for _ in range(25)) for _ in range(20)]
    expected = {(i, j) for i, n in enumerate(needles) for j, h in enumerate(hay)
                if len(" ".join(n.split())) >= 20 and " ".join(n.split()) in " ".join(h.split())}
    assert {(p.left, p.right) for p in contained(needles, hay, min_chars=20)} == expected
    assert expected


POOLED = ["arc_easy", "arc_challenge", "boolq", "openbookqa", "piqa", "hellaswag", "winogrande",
          "gsm8k", "math", "humaneval", "mbpp", "mbpp_sanitized"]


@needs_data
@pytest.mark.parametrize("name", POOLED)
def test_no_evaluated_item_leaks_into_the_pool(name, capsys):
    """Gold answers (>= 20 characters) never inside a rendered pool prompt or answer; no pool text with
    8-gram Jaccard >= 0.8 to an evaluated item's (question/context fields, without the template)."""
    from harness.tasks import TaskHandle

    handle = TaskHandle.from_cfg(compose(f"task={name}").task)
    fields = handle.task.config.dataset_kwargs["dedup_fields"]
    pool, evaluated = handle.pool_docs, handle.eval_docs
    text = [" ".join(str(d.get(f) or "") for f in fields) for d in evaluated]
    pool_text = [" ".join(str(d.get(f) or "") for f in fields) for d in pool]
    similar = near_duplicates(text, pool_text, threshold=0.5)
    gold = [handle.labeled_example(d)[1].strip() for d in evaluated]
    rendered = ["".join(handle.labeled_example(d)) for d in pool]
    leaks = contained(gold, rendered, min_chars=20)
    with capsys.disabled():
        worst = (f"Jaccard {similar[0].score:.3f}: eval {text[similar[0].left][:80]!r} ~ pool "
                 f"{pool_text[similar[0].right][:80]!r}") if similar else "no pair with Jaccard >= 0.5"
        print(f"\n{name}: pool {len(pool)}, eval {len(evaluated)}; most similar pair: {worst}")
    assert not leaks, f"{name}: eval gold {gold[leaks[0].left][:80]!r} inside pool item {leaks[0].right}"
    assert not similar or similar[0].score < 0.8
    info = handle.pool_info
    assert info.leak_rules == {"ngram": 8, "jaccard": 0.8, "answer_chars": 20,
                               "answer": info.leak_rules["answer"]}
    assert info.leak_rules["answer"] is not None or name == "boolq"  # boolq's answers are yes/no


@needs_data
def test_hellaswag_is_carved_by_whole_caption_chains():
    """A window's gold ending opens the next window's context: the two always land on the same side."""
    from harness.data import load_split
    from harness.pools import build_splits

    rows = load_split("Rowan/hellaswag", "default", "validation").rows
    links = contained([r["endings"][int(r["label"])] for r in rows], [r["ctx"] for r in rows], 20)
    assert len(links) > 1000  # the mirror's chains (1,425 links, counted when this was written)

    def hellaswag_gold(row):
        return row["endings"][int(row["label"])]

    _, _, info = build_splits("Rowan/hellaswag", "default", "validation", pool_size=1000, pool_seed=1234,
                              dedup_fields=["ctx"], answer=hellaswag_gold, group_overlap=True)
    carved = set(info.carved_rows)
    assert not [p for p in links if (p.left in carved) != (p.right in carved)]
    assert info.linked_groups > 500 and len(carved) >= 1000
    # Row by row, as before, chains straddle the cut.
    _, _, plain = build_splits("Rowan/hellaswag", "default", "validation", pool_size=1000, pool_seed=1234,
                               dedup_fields=["ctx"])
    rows_cut = set(plain.carved_rows)
    assert sum((p.left in rows_cut) != (p.right in rows_cut) for p in links) > 100


@needs_data
def test_dnd_refuses_a_library_task_that_reads_the_targets_dataset():
    """Leakage is a matter of data, not of names: a target under another name is still caught."""
    from omegaconf import OmegaConf

    from baselines.dnd.strategy import DragAndDrop
    from harness.errors import HarnessError
    from harness.tasks import dataset_identity

    assert dataset_identity(compose("task=arc_easy").task) == ("allenai/ai2_arc", "ARC-Easy")
    assert dataset_identity(compose("task=arc_challenge").task) == ("allenai/ai2_arc", "ARC-Challenge")
    cfg = compose("task=arc_easy", "strategy=dnd", "strategy.library=[arc_easy,piqa]")
    OmegaConf.update(cfg, "task.name", "arc_easy_renamed")
    with pytest.raises(HarnessError, match="reads the target's dataset allenai/ai2_arc/ARC-Easy"):
        DragAndDrop().validate_cell(cfg)
    DragAndDrop().validate_cell(compose("task=arc_challenge", "strategy=dnd", "strategy.library=[arc_easy,piqa]"))
