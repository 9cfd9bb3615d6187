"""Simple syllogisms: two premises over three nonsense terms per training document; the test scores
candidate conclusions about the two end terms.

Trained: "The relationships between glon, troff and yomp are: All glon are yomp. All troff are glon."
Tested: "The relationships between yomp and troff are:" with "All troff are yomp." as the answer.

Which conclusion is right must not depend on a logic convention, so every item satisfies both:
- the gold conclusion is entailed in modern logic (terms may be empty), hence also when every term
  is assumed to have members (existential import);
- no distractor is entailed even with existential import.
"Some" and "no" statements are symmetric (some x are y = some y are x), so an item shows each of
them in one direction only, and "all x are y" gives "some x are y" under existential import. Hence
every item scores four candidates, two "all" statements (both directions) and two symmetric ones:
- gold "all x are y": all x are y, all y are x, no x are y, no y are x;
- gold "no" (or "some"): the gold in one direction, all x are y, all y are x, and the other
  symmetric quantifier ("some", or "no") in one direction; directions are drawn with the seed.
The premise forms are every pair of {all, some, no} premises (both directions of each) that meets
these rules, found by the closure (closure.entails) rather than listed by hand; conclusion types
(all, some, no) are balanced over the problems.
"""
from __future__ import annotations

import random
from functools import lru_cache
from itertools import product

from harness.generalization.base import Document, Generation, make_item
from harness.generalization.closure import QUANTIFIERS, SyllogismClosure, entails, satisfiable
from harness.generalization.words import WordSource

SPLIT = "syllogism"
TEMPLATE_WORDS = frozenset("the relationships between and are all some no".split())


def sentence(claim) -> str:
    quantifier, x, y = claim
    return f"{quantifier.capitalize()} {x} are {y}."


def _symmetric_distractors(kind: str) -> tuple[str, ...]:
    return {"all": ("no",), "no": ("some",), "some": ("no",)}[kind]


@lru_cache(maxsize=1)
def forms() -> dict[str, list[tuple[tuple, tuple, tuple]]]:
    """Premise forms over the terms A (end), B (middle), C (end), by the type of their one conclusion:
    kind -> [(premise about A and B, premise about B and C, the conclusion)]."""
    out: dict[str, list] = {q: [] for q in QUANTIFIERS}
    candidates = [(q, x, y) for q in QUANTIFIERS for x, y in (("A", "C"), ("C", "A"))]
    for q1, q2 in product(QUANTIFIERS, repeat=2):
        for first, second in product(((q1, "A", "B"), (q1, "B", "A")), ((q2, "B", "C"), (q2, "C", "B"))):
            premises = [first, second]
            if not satisfiable(premises, existential_import=True):
                continue
            entailed = [c for c in candidates if entails(premises, c)]
            kinds = {c[0] for c in entailed}
            if len(kinds) != 1:
                continue
            (kind,) = kinds
            if kind == "all" and len(entailed) != 1:
                continue
            gold = entailed[0]
            x, y = gold[1], gold[2]
            shown = [("all", x, y), ("all", y, x)] + [(q, a, b) for q in _symmetric_distractors(kind)
                                                     for a, b in ((x, y), (y, x))]
            if any(entails(premises, c, existential_import=True) for c in shown if c != gold):
                continue  # a distractor would be right under existential import
            out[kind].append((first, second, gold))
    return out


def max_problems() -> int:
    return WordSource.capacity(TEMPLATE_WORDS) // 3


def generate(seed: int, n_problems: int) -> Generation:
    rng = random.Random(seed)
    names = WordSource(rng, TEMPLATE_WORDS).take(3 * n_problems)
    by_kind = forms()
    kinds = [QUANTIFIERS[i % len(QUANTIFIERS)] for i in range(n_problems)]
    rng.shuffle(kinds)
    documents, items = [], []
    for i, kind in enumerate(kinds):
        first, second, conclusion = rng.choice(by_kind[kind])
        term = dict(zip("ABC", names[3 * i:3 * i + 3]))

        def named(claim):
            return (claim[0], term[claim[1]], term[claim[2]])

        premises = [named(first), named(second)]
        rng.shuffle(premises)
        listed = list(term.values())
        rng.shuffle(listed)
        documents.append(Document(f"The relationships between {listed[0]}, {listed[1]} and {listed[2]} are:",
                                  tuple(sentence(p) for p in premises), tuple(premises)))

        a, c = term["A"], term["C"]
        ends = [a, c]
        rng.shuffle(ends)
        gold = named(conclusion)
        if kind != "all" and rng.random() < 0.5:  # a symmetric conclusion, shown in a seeded direction
            gold = (gold[0], gold[2], gold[1])
        distractors = [("all", x, y) for x, y in ((a, c), (c, a)) if ("all", x, y) != gold]
        for quantifier in _symmetric_distractors(kind):
            directions = [(a, c), (c, a)]
            if kind != "all":
                directions = [rng.choice(directions)]
            distractors += [(quantifier, x, y) for x, y in directions]
        items.append(make_item(rng, f"The relationships between {ends[0]} and {ends[1]} are:",
                               (sentence(gold), gold), [(sentence(d), d) for d in distractors],
                               f"{first[0]} + {second[0]} -> {kind}"))
    trained = [f for doc in documents for f in doc.facts]
    return Generation("gen_syllogisms", documents, {SPLIT: items}, SyllogismClosure(trained),
                      words={"entities": names})
