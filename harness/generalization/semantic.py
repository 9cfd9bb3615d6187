"""Semantic structure: a hierarchy of nonsense categories with properties and relations, taught by
short wiki-like documents, and tested on four kinds of generalization.

The world: root categories, each with mid categories, each with leaf categories ("gruds are a type
of abmes"). Every category has 1-3 properties of its own ("abmes are rony"), which all of its
subtypes inherit; every mid and leaf category has a relation to a category under
another root ("abmes blick telks"), also inherited by subtypes. Every noun, adjective and verb is a
nonsense word, and every property word belongs to one category only.

Training: one document per category (a few styles of title line, order and wording), stating the
category's parent, its own properties and relations, and which categories are a type of it.
Held-out leaves get no document: only "x are a type of y", in their parent's.

Test splits (multiple choice, the options not shown; 2-4 choices):
- rephrased: a trained fact, same direction, new wording ("It is true that gruds are" -> "rony.");
- reversed: a trained relation asked backwards ("One type of abmes is" -> "gruds.",
  "telks are blicked by" -> "abmes.");
- syllogism: a conclusion two or more steps away, never stated in training (inherited properties
  and relations, type-of through a grandparent);
- holdout: the same inferences about held-out leaves, whose own facts were never trained.
Distractors are hard: each is true of another category (another category's property, parent,
subtype, relation object or subject) and does not follow for this one; candidates that are merely
related (a property of one of the category's own subtypes, an object's parent) are not used.
"""
from __future__ import annotations

import random

from harness.generalization.base import Document, Generation, Item, make_item, pick
from harness.generalization.closure import DOES, DONE_BY, HAS, INCLUDES, TYPE_OF, SemanticClosure
from harness.generalization.words import WordSource

SPLITS = ("rephrased", "reversed", "syllogism", "holdout")
TITLES = ("From the encyclopedia, on {x}:", "Notes on {x}:", "What to know about {x}:")
TEMPLATE_WORDS = frozenset("from the encyclopedia on notes what to know about are a type of and it is true that one "
                           "by".split())


def _listing(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def passive(verb: str) -> str:
    return f"{verb}ed"  # verbs end in a consonant (see generate)


def statement(claim) -> tuple[str, str]:
    """How a test renders a claim: (context, choice)."""
    kind = claim[0]
    if kind == HAS:
        return f"It is true that {claim[1]} are", f"{claim[2]}."
    if kind == TYPE_OF:
        return f"It is true that {claim[1]} are a type of", f"{claim[2]}."
    if kind == DOES:
        return f"It is true that {claim[1]} {claim[2]}", f"{claim[3]}."
    if kind == INCLUDES:
        return f"One type of {claim[1]} is", f"{claim[2]}."
    if kind == DONE_BY:
        return f"{claim[1]} are {passive(claim[2])} by", f"{claim[3]}."
    raise ValueError(f"unknown claim {claim}")


def words_needed(n_roots: int, mids_per_root: int, leaves_per_mid: int, n_verbs: int) -> int:
    categories = n_roots * (1 + mids_per_root * (1 + leaves_per_mid))
    return 4 * categories + n_verbs  # at most three properties per category


def capacity() -> int:
    return WordSource.capacity(TEMPLATE_WORDS)


class _World:
    """The generated hierarchy (all of it, held-out facts included) and the closure of what is trained."""

    def __init__(self, rng: random.Random, n_roots: int, mids_per_root: int, leaves_per_mid: int, holdout: int,
                 n_verbs: int):
        source = WordSource(rng, TEMPLATE_WORDS)
        n_categories = n_roots * (1 + mids_per_root * (1 + leaves_per_mid))
        names = iter(source.take(n_categories))
        self.order: list[str] = []  # depth-first: root, its first mid, that mid's leaves, ...
        self.parent: dict[str, str] = {}
        self.depth: dict[str, int] = {}
        self.root: dict[str, str] = {}
        self.children: dict[str, list[str]] = {}
        for _ in range(n_roots):
            root = next(names)
            self._add(root, None)
            for _ in range(mids_per_root):
                mid = next(names)
                self._add(mid, root)
                for _ in range(leaves_per_mid):
                    self._add(next(names), mid)
        leaves = [c for c in self.order if self.depth[c] == 2]
        self.held = sorted(rng.sample(leaves, holdout), key=self.order.index)
        self.trained = [c for c in self.order if c not in self.held]

        counts = [rng.randint(1, 3) for _ in self.order]
        adjectives = iter(source.take(sum(counts)))
        self.own = {c: [next(adjectives) for _ in range(k)] for c, k in zip(self.order, counts)}
        self.verbs = source.take(n_verbs, accept=lambda w: w[-1] not in "aeiouy")
        self.relations: dict[str, list[tuple[str, str]]] = {c: [] for c in self.order}
        for subject in self.trained:
            if self.depth[subject] == 0:
                continue
            objects = [o for o in self.trained if self.depth[o] > 0 and self.root[o] != self.root[subject]]
            inherited = [r for a in self.lineage(subject) for r in self.relations[a]]
            for _ in range(10):  # a leaf's relation must be new to it, not one it inherits
                relation = (rng.choice(self.verbs), rng.choice(objects))
                if relation not in inherited:
                    self.relations[subject].append(relation)
                    break

    def _add(self, name: str, parent: str | None) -> None:
        self.order.append(name)
        self.children[name] = []
        if parent is None:
            self.depth[name], self.root[name] = 0, name
        else:
            self.parent[name], self.depth[name], self.root[name] = parent, self.depth[parent] + 1, self.root[parent]
            self.children[parent].append(name)

    def lineage(self, x: str) -> list[str]:
        """x and its ancestors, nearest first."""
        out = [x]
        while out[-1] in self.parent:
            out.append(self.parent[out[-1]])
        return out

    def document(self, c: str, style: int) -> Document:
        parts: list[tuple[str, tuple[tuple, ...]]] = []  # (sentence, the facts it states)
        if c in self.parent:
            parts.append((f"{c} are a type of {self.parent[c]}.", ((TYPE_OF, c, self.parent[c]),)))
        own = self.own[c]
        if style == 2 and len(own) > 1:
            parts.append((f"{c} are {_listing(own)}.", tuple((HAS, c, p) for p in own)))
        else:
            parts += [(f"{c} are {p}.", ((HAS, c, p),)) for p in own]
        parts += [(f"{c} {v} {o}.", ((DOES, c, v, o),)) for v, o in self.relations[c]]
        kids = [(f"{k} are a type of {c}.", ((TYPE_OF, k, c),)) for k in self.children[c]]
        parts = kids + parts if style == 1 else parts + kids
        return Document(TITLES[style].format(x=c), tuple(s for s, _ in parts), tuple(f for _, fs in parts for f in fs))


def generate(seed: int, n_roots: int, mids_per_root: int, leaves_per_mid: int, holdout: int, n_verbs: int,
             n_choices: int) -> Generation:
    rng = random.Random(seed)
    world = _World(rng, n_roots, mids_per_root, leaves_per_mid, holdout, n_verbs)
    documents = [world.document(c, rng.randrange(len(TITLES))) for c in world.trained]
    rng.shuffle(documents)
    closure = SemanticClosure([f for doc in documents for f in doc.facts])
    items = _Items(rng, world, closure, n_choices - 1).by_split()
    return Generation("gen_semantic", documents, items, closure,
                      words={"categories": world.order, "held_out": world.held, "verbs": world.verbs,
                             "properties": [p for c in world.order for p in world.own[c]]})


class _Items:
    """Test items of every split, with hard distractors chosen through the closure."""

    def __init__(self, rng: random.Random, world: _World, closure: SemanticClosure, n_distractors: int):
        self.rng, self.w, self.c, self.n = rng, world, closure, n_distractors
        self.owner = {p: c for c in world.trained for p in world.own[c]}  # trained properties only
        self.triples = [(s, v, o) for s in world.trained for v, o in world.relations[s]]

    def _related(self, x: str) -> set[str]:
        return {x, *self.c.ancestors(x), *self.c.descendants(x)}

    def _item(self, gold: tuple, distractors: list[tuple], inference: str) -> Item | None:
        if not distractors:
            return None
        context, choice = statement(gold)
        return make_item(self.rng, context, (choice, gold), [(statement(d)[1], d) for d in distractors], inference)

    def has(self, x: str, p: str, inference: str) -> Item | None:
        below = set(self.c.descendants(x))
        candidates = [q for q, owner in self.owner.items()
                      if owner not in below and not self.c.holds((HAS, x, q))]
        level = self.w.depth[self.owner[p]]
        chosen = pick(self.rng, candidates, self.n, prefer=lambda q: self.w.depth[self.owner[q]] == level)
        return self._item((HAS, x, p), [(HAS, x, q) for q in chosen], inference)

    def type_of(self, x: str, y: str, inference: str) -> Item | None:
        parents = [z for z in self.w.trained if self.w.children[z]]
        candidates = [z for z in parents if z not in self._related(x)]
        chosen = pick(self.rng, candidates, self.n, prefer=lambda z: self.w.depth[z] == self.w.depth[y])
        return self._item((TYPE_OF, x, y), [(TYPE_OF, x, z) for z in chosen], inference)

    def includes(self, y: str, x: str) -> Item | None:
        candidates = [z for z in self.w.trained if z in self.w.parent and z not in self._related(y)]
        chosen = pick(self.rng, candidates, self.n, prefer=lambda z: self.w.depth[z] == self.w.depth[x])
        return self._item((INCLUDES, y, x), [(INCLUDES, y, z) for z in chosen], "reversed type")

    def does(self, x: str, v: str, o: str, inference: str) -> Item | None:
        related: set[str] = set()
        for verb, obj in self.c.relations(x):
            if verb == v:
                related |= self._related(obj)
        candidates = [obj for _, _, obj in self.triples if obj not in related and obj not in self._related(x)]
        same_verb = {obj for _, verb, obj in self.triples if verb == v}
        chosen = pick(self.rng, candidates, self.n, prefer=lambda obj: obj in same_verb)
        return self._item((DOES, x, v, o), [(DOES, x, v, obj) for obj in chosen], inference)

    def done_by(self, o: str, v: str, s: str) -> Item | None:
        near_o = self._related(o)
        excluded = set(near_o)
        for z in self.c.categories():  # whoever does v to o or to a relative of o, and their ancestors
            if any(verb == v and obj in near_o for verb, obj in self.c.relations(z)):
                excluded |= {z, *self.c.ancestors(z)}
        candidates = [subj for subj, _, _ in self.triples if subj not in excluded]
        same_verb = {subj for subj, verb, _ in self.triples if verb == v}
        chosen = pick(self.rng, candidates, self.n, prefer=lambda subj: subj in same_verb)
        return self._item((DONE_BY, o, v, s), [(DONE_BY, o, v, subj) for subj in chosen], "reversed relation")

    def inferred(self, x: str, label: str) -> list[Item | None]:
        """Everything x inherits from its ancestors, none of it trained about x itself."""
        out = []
        for a in self.w.lineage(x)[1:]:
            out += [self.has(x, p, f"{label} property") for p in self.w.own[a]]
            out += [self.does(x, v, o, f"{label} relation") for v, o in self.w.relations[a]
                    if not self.c.trained((DOES, x, v, o))]
            if a != self.w.parent[x]:
                out.append(self.type_of(x, a, f"{label} type"))
        return out

    def by_split(self) -> dict[str, list[Item]]:
        w = self.w
        rephrased = [self.has(x, p, "trained property") for x in w.trained for p in w.own[x]]
        rephrased += [self.type_of(x, w.parent[x], "trained type") for x in w.trained if x in w.parent]
        rephrased += [self.does(s, v, o, "trained relation") for s, v, o in self.triples]
        reversed_ = [self.includes(w.parent[x], x) for x in w.trained if x in w.parent]
        reversed_ += [self.done_by(o, v, s) for s, v, o in self.triples]
        syllogism = [item for x in w.trained for item in self.inferred(x, "inherited")]
        holdout = [item for x in w.held for item in self.inferred(x, "held-out")]
        splits = {"rephrased": rephrased, "reversed": reversed_, "syllogism": syllogism, "holdout": holdout}
        return {name: [i for i in items if i is not None] for name, items in splits.items()}
