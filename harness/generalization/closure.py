"""What follows from a task's training facts: a small symbolic closure over structured facts.

The generators record every fact a training document states as a tuple, and every answer choice as
the claim it makes. A claim "follows" when the closure of the training facts derives it; the suite's
tests check that each gold claim follows and that no distractor does. Nothing here reads text.

Claims and facts, by task:
- reversals: ("cmp", x, adjective, y) "x are <adjective> than y". An adjective is one side of a
  dimension (brighter / dimmer); the closure is the transitive closure of each dimension's order.
- syllogisms: (quantifier, x, y) with quantifier all / some / no. Entailment is decided exactly, by
  enumerating every Venn-diagram model of the terms involved (which regions are inhabited).
- semantic: ("type_of", x, y) "x are a type of y", ("has", x, p) "x are p", ("does", x, verb, o)
  "x <verb> o", and the reversed forms ("includes", y, x) "one type of y is x" and
  ("done_by", o, verb, x) "o are <verb>ed by x". type_of is transitive; properties and relations
  are inherited by every subtype of their subject (not by subtypes of a relation's object).
"""
from __future__ import annotations

from itertools import product

CMP = "cmp"
QUANTIFIERS = ("all", "some", "no")
TYPE_OF, HAS, DOES, INCLUDES, DONE_BY = "type_of", "has", "does", "includes", "done_by"


# ------------------------------------------------------------------------------------------ comparisons

class ComparisonClosure:
    """Strict orders, one per dimension, closed under transitivity.

    `sides` maps each adjective to (dimension, +1 for the "more" side or -1 for the "less" side).
    """

    def __init__(self, facts, sides: dict[str, tuple[str, int]]):
        self.sides = sides
        above: dict[tuple[str, str], set[str]] = {}  # (dimension, x) -> everything x is more than
        for fact in facts:
            dimension, greater, lesser = self._ordered(fact)
            above.setdefault((dimension, greater), set()).add(lesser)
        changed = True
        while changed:  # transitive closure; the fact sets are small
            changed = False
            for (dimension, x), below in above.items():
                reach = set().union(*(above.get((dimension, y), set()) for y in below)) - below
                if reach:
                    below |= reach
                    changed = True
        self._above = above

    def _ordered(self, claim) -> tuple[str, str, str]:
        kind, x, adjective, y = claim
        if kind != CMP:
            raise ValueError(f"not a comparison: {claim}")
        dimension, sign = self.sides[adjective]
        return (dimension, x, y) if sign > 0 else (dimension, y, x)

    def holds(self, claim) -> bool:
        dimension, greater, lesser = self._ordered(claim)
        return lesser in self._above.get((dimension, greater), set())

    def contradicted(self, claim) -> bool:
        dimension, greater, lesser = self._ordered(claim)
        return greater in self._above.get((dimension, lesser), set())

    def consistent(self) -> bool:
        """No x is both more and less than y on one dimension (nor more than itself)."""
        return not any(x in below for (_, x), below in self._above.items())


# ------------------------------------------------------------------------------------------- syllogisms

def _true_in(statement, regions, terms) -> bool:
    """Whether a categorical statement holds when exactly `regions` are inhabited."""
    quantifier, x, y = statement
    i, j = terms.index(x), terms.index(y)
    if quantifier == "all":
        return not any(r[i] and not r[j] for r in regions)
    overlap = any(r[i] and r[j] for r in regions)
    if quantifier == "some":
        return overlap
    if quantifier == "no":
        return not overlap
    raise ValueError(f"unknown quantifier in {statement}")


def _models(terms: list[str], existential_import: bool):
    """Every set of inhabited Venn regions (a region: which terms an individual belongs to)."""
    regions = [r for r in product((False, True), repeat=len(terms)) if any(r)]
    for mask in range(1 << len(regions)):
        inhabited = [r for k, r in enumerate(regions) if mask >> k & 1]
        if existential_import and not all(any(r[i] for r in inhabited) for i in range(len(terms))):
            continue
        yield inhabited


def entails(premises, conclusion, existential_import: bool = False) -> bool:
    """Whether every model of the premises is a model of the conclusion.

    Without existential import (modern logic) a term may be empty, so "all x are y" does not give
    "some x are y"; with it, every term named is assumed to have members.
    """
    terms = sorted({t for s in [*premises, conclusion] for t in s[1:]})
    return all(_true_in(conclusion, m, terms) for m in _models(terms, existential_import)
               if all(_true_in(p, m, terms) for p in premises))


def satisfiable(premises, existential_import: bool = True) -> bool:
    terms = sorted({t for s in premises for t in s[1:]})
    return any(all(_true_in(p, m, terms) for p in premises) for m in _models(terms, existential_import))


class SyllogismClosure:
    """Categorical facts; a claim is decided on the facts connected to its terms (each problem has its own)."""

    MAX_TERMS = 5  # 2^(2^5 - 1) models is the most an exact decision may enumerate

    def __init__(self, facts):
        self.facts = [tuple(f) for f in facts]
        self._by_term: dict[str, list[tuple]] = {}
        for fact in self.facts:
            for term in fact[1:]:
                self._by_term.setdefault(term, []).append(fact)

    def _relevant(self, claim) -> list[tuple]:
        seen, todo, facts = set(), list(claim[1:]), []
        while todo:
            term = todo.pop()
            if term in seen:
                continue
            seen.add(term)
            for fact in self._by_term.get(term, []):
                if fact not in facts:
                    facts.append(fact)
                    todo.extend(fact[1:])
        if len(seen) > self.MAX_TERMS:
            raise ValueError(f"{claim}: {len(seen)} connected terms is too many to decide exactly")
        return facts

    def holds(self, claim, existential_import: bool = False) -> bool:
        return entails(self._relevant(claim), claim, existential_import)

    def consistent(self) -> bool:
        """Every problem's premises can all be true with every term inhabited."""
        return all(satisfiable(self._relevant(f)) for f in self.facts)


# --------------------------------------------------------------------------------------------- semantic

class SemanticClosure:
    """A category hierarchy with inherited properties and relations (see the module docstring)."""

    def __init__(self, facts):
        self.facts = [tuple(f) for f in facts]
        self.parents: dict[str, list[str]] = {}
        self._has: dict[str, list[str]] = {}
        self._does: dict[str, list[tuple[str, str]]] = {}
        for fact in self.facts:
            kind = fact[0]
            if kind == TYPE_OF:
                self.parents.setdefault(fact[1], []).append(fact[2])
            elif kind == HAS:
                self._has.setdefault(fact[1], []).append(fact[2])
            elif kind == DOES:
                self._does.setdefault(fact[1], []).append((fact[2], fact[3]))
            else:
                raise ValueError(f"a training fact must be type_of, has or does: {fact}")
        self._ancestors: dict[str, list[str]] = {}
        self._descendants: dict[str, list[str]] = {}
        self._categories: list[str] | None = None

    def ancestors(self, x: str) -> list[str]:
        """Every category x is (transitively) a type of, nearest first, without x."""
        if x not in self._ancestors:
            out, todo = [], list(self.parents.get(x, []))
            while todo:
                y = todo.pop(0)
                if y not in out and y != x:
                    out.append(y)
                    todo.extend(self.parents.get(y, []))
            self._ancestors[x] = out
        return self._ancestors[x]

    def descendants(self, y: str) -> list[str]:
        """Every category that is (transitively) a type of y."""
        if y not in self._descendants:
            self._descendants[y] = [x for x in self.categories() if y in self.ancestors(x)]
        return self._descendants[y]

    def categories(self) -> list[str]:
        """Every category a fact names, in the order the facts first name them."""
        if self._categories is None:
            names: dict[str, None] = {}
            for fact in self.facts:
                for name in ((fact[1], fact[2]) if fact[0] == TYPE_OF else
                             (fact[1], fact[3]) if fact[0] == DOES else (fact[1],)):
                    names.setdefault(name)
            self._categories = list(names)
        return self._categories

    def properties(self, x: str) -> list[str]:
        """Own and inherited properties of x."""
        return [p for a in [x, *self.ancestors(x)] for p in self._has.get(a, [])]

    def relations(self, x: str) -> list[tuple[str, str]]:
        """(verb, object) pairs x takes part in as the subject, own and inherited."""
        return [r for a in [x, *self.ancestors(x)] for r in self._does.get(a, [])]

    def holds(self, claim) -> bool:
        kind = claim[0]
        if kind == TYPE_OF:
            return claim[2] in self.ancestors(claim[1])
        if kind == INCLUDES:
            return claim[1] in self.ancestors(claim[2])
        if kind == HAS:
            return claim[2] in self.properties(claim[1])
        if kind == DOES:
            return (claim[2], claim[3]) in self.relations(claim[1])
        if kind == DONE_BY:
            return (claim[2], claim[1]) in self.relations(claim[3])
        raise ValueError(f"unknown claim {claim}")

    def trained(self, claim) -> bool:
        """Whether the claim, put in its forward form, is itself a training fact (not only derived)."""
        kind = claim[0]
        forward = ((TYPE_OF, claim[2], claim[1]) if kind == INCLUDES else
                   (DOES, claim[3], claim[2], claim[1]) if kind == DONE_BY else tuple(claim))
        return forward in self.facts
