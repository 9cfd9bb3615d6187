"""What a generator returns: training documents and test items, each with the structured facts or
claims behind its text, and how they become the task's rows."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Document:
    """A training document: a title line (`context`) and sentences, each stating facts."""
    context: str
    sentences: tuple[str, ...]
    facts: tuple[tuple, ...]  # every fact the sentences state, structured (closure.py)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass(frozen=True)
class Item:
    """A multiple-choice test item: context + " " + choice is scored for each choice."""
    context: str
    choices: tuple[str, ...]
    claims: tuple[tuple, ...]  # what each choice asserts, structured; claims[gold] follows from training
    gold: int
    inference: str  # the kind of step the gold needs (e.g. "reversal", "inherited property")


@dataclass
class Generation:
    task: str
    documents: list[Document]
    items: dict[str, list[Item]]  # test split -> items
    closure: object  # built from the documents' facts
    words: dict[str, list[str]] = field(default_factory=dict)  # the nonsense words drawn, by role

    @property
    def facts(self) -> list[tuple]:
        out: list[tuple] = []
        for doc in self.documents:
            out.extend(f for f in doc.facts if f not in out)
        return out


def pool_rows(gen: Generation) -> list[dict]:
    """One row per training document; training on it means the completion " " + text after context."""
    return [{"id": f"{gen.task}-pool-{i:04d}", "kind": "statement", "context": doc.context, "choices": [doc.text],
             "gold": 0, "split": "pool", "doc": i, "text": doc.text} for i, doc in enumerate(gen.documents)]


def eval_rows(gen: Generation, split: str) -> list[dict]:
    return [{"id": f"{gen.task}-{split}-{i:04d}", "kind": "test", "context": item.context,
             "choices": list(item.choices), "gold": item.gold, "split": split, "doc": -1}
            for i, item in enumerate(gen.items[split])]


def normalized(text: str) -> str:
    """Lower case, words only: how statements are compared for verbatim overlap."""
    return " ".join(re.findall(r"[a-z]+", text.lower()))


def verbatim_leaks(gen: Generation) -> list[str]:
    """Test statements (context + gold choice) that occur word for word inside a training document."""
    docs = [f" {normalized(d.context + ' ' + d.text)} " for d in gen.documents]
    leaks = []
    for split, items in gen.items.items():
        for item in items:
            statement = f" {normalized(item.context + ' ' + item.choices[item.gold])} "
            if any(statement in doc for doc in docs):
                leaks.append(f"{split}: {statement.strip()}")
    return leaks


def make_item(rng: random.Random, context: str, gold: tuple[str, tuple], distractors: list[tuple[str, tuple]],
              inference: str) -> Item:
    """An item whose choices (gold and distractors, as (text, claim) pairs) are put in a seeded order."""
    options = [gold, *distractors]
    order = list(range(len(options)))
    rng.shuffle(order)
    return Item(context, tuple(options[k][0] for k in order), tuple(options[k][1] for k in order),
                order.index(0), inference)


def pick(rng: random.Random, candidates: list, n: int, prefer=None) -> list:
    """n of the candidates (deduplicated, in their given order first), seeded; `prefer(c)` True ones first."""
    unique = list(dict.fromkeys(candidates))
    rng.shuffle(unique)
    if prefer is not None:
        unique.sort(key=lambda c: not prefer(c))  # stable: the shuffle orders each group
    return unique[:n]
