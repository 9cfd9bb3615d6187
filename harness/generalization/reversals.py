"""Simple reversals: comparative facts between nonsense entities, each repeated in several short
articles; the test asks for the reversed comparison against its contradiction.

Trained: "Did you know that femp are brighter than glon." Tested: "... glon are dimmer than femp."
(true) against "... glon are brighter than femp." (contradicts the fact). Each fact has its own
two entities, so no fact links to another and nothing but the reversal of one fact answers an item.
"""
from __future__ import annotations

import random

from harness.generalization.base import Document, Generation, make_item
from harness.generalization.closure import CMP, ComparisonClosure
from harness.generalization.words import WordSource

SPLIT = "reversed"

# (the "more" side, the "less" side) of 28 comparison dimensions
DIMENSIONS = (
    ("brighter", "dimmer"), ("heavier", "lighter"), ("larger", "smaller"), ("faster", "slower"),
    ("older", "younger"), ("taller", "shorter"), ("stronger", "weaker"), ("warmer", "colder"),
    ("louder", "quieter"), ("harder", "softer"), ("richer", "poorer"), ("wider", "narrower"),
    ("deeper", "shallower"), ("thicker", "thinner"), ("wetter", "drier"), ("sweeter", "more bitter"),
    ("happier", "sadder"), ("more dangerous", "less dangerous"), ("more common", "rarer"),
    ("more expensive", "cheaper"), ("cleaner", "dirtier"), ("smoother", "rougher"), ("braver", "more timid"),
    ("cleverer", "more foolish"), ("sharper", "duller"), ("more popular", "less popular"), ("busier", "lazier"),
    ("fiercer", "gentler"),
)
SIDES = {adj: (more, sign) for more, less in DIMENSIONS for adj, sign in ((more, 1), (less, -1))}
CONVERSE = {a: b for pair in DIMENSIONS for a, b in (pair, pair[::-1])}

# Article openings; a test item opens with one of them too, so only the comparison is new to it.
PREFIXES = (
    "Did you know that", "It is well known that", "Few people realize that", "Studies have shown that",
    "It turns out that", "Experts agree that", "Recent reports say that", "As everyone knows,",
    "It has been observed that", "Records show that", "Surprisingly,", "In fact,",
)
TEMPLATE_WORDS = frozenset(w.lower().strip(",") for text in [*SIDES, *PREFIXES, "are than"] for w in text.split())


def sentence(claim) -> str:
    _, x, adjective, y = claim
    return f"{x} are {adjective} than {y}."


def max_facts() -> int:
    return WordSource.capacity(TEMPLATE_WORDS) // 2


def generate(seed: int, n_facts: int, articles: int) -> Generation:
    rng = random.Random(seed)
    names = WordSource(rng, TEMPLATE_WORDS).take(2 * n_facts)
    dimensions: list[tuple[str, str]] = []
    while len(dimensions) < n_facts:  # every dimension once before any is used again
        cycle = list(DIMENSIONS)
        rng.shuffle(cycle)
        dimensions.extend(cycle)
    facts = []
    for i in range(n_facts):
        adjective = rng.choice(dimensions[i])
        facts.append((CMP, names[2 * i], adjective, names[2 * i + 1]))

    documents = [Document(prefix, (sentence(fact),), (fact,)) for fact in facts
                 for prefix in rng.sample(PREFIXES, articles)]
    rng.shuffle(documents)  # a fact's articles are spread over the pool

    items = []
    for _, x, adjective, y in facts:
        reversal = (CMP, y, CONVERSE[adjective], x)
        contradiction = (CMP, y, adjective, x)
        items.append(make_item(rng, rng.choice(PREFIXES), (sentence(reversal), reversal),
                               [(sentence(contradiction), contradiction)], "reversal"))
    trained = [f for doc in documents for f in doc.facts]
    return Generation("gen_reversals", documents, {SPLIT: items}, ComparisonClosure(trained, SIDES),
                      words={"entities": names})
