"""Finding evaluated items that leak into an adaptation pool: near-duplicate texts and contained answers.

Two checks, both exact (no sampling or hashing approximations):

- `near_duplicates`: pairs of texts whose sets of character n-grams (lower-cased, whitespace
  collapsed) have Jaccard similarity >= a threshold. Candidates come from prefix filtering: with the
  n-grams of every text ordered rarest first, two sets with Jaccard >= t must share one of the first
  |s| - ceil(t·|s|) + 1 n-grams of each (Chaudhuri et al., 2006); each candidate is then verified.
- `contained`: pairs where one text (an evaluated item's gold answer) occurs verbatim inside
  another (a pool item's prompt or answer), after the same normalization.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from operator import itemgetter

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", str(text).lower()).strip()


def ngrams(text: str, n: int = 8) -> frozenset[str]:
    """The set of character n-grams of the normalized text (the text itself when shorter than n)."""
    t = normalize(text)
    if len(t) <= n:
        return frozenset([t]) if t else frozenset()
    return frozenset(t[i:i + n] for i in range(len(t) - n + 1))


@dataclass(frozen=True)
class Pair:
    left: int    # index into the first list
    right: int   # index into the second list
    score: float  # Jaccard similarity, or the matched length for containment


def near_duplicates(left: list[str], right: list[str], threshold: float = 0.8, n: int = 8) -> list[Pair]:
    """Every (i, j) with Jaccard(ngrams(left[i]), ngrams(right[j])) >= threshold, most similar first."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1] (got {threshold})")
    grams_l = [ngrams(t, n) for t in left]
    grams_r = [ngrams(t, n) for t in right]
    freq = Counter(g for s in (*grams_l, *grams_r) for g in s)
    # n-grams as integers ranked rarest first: a set's prefix is then its smallest integers.
    # (Any fixed order is correct; rarest first keeps the candidate lists short.)
    rank = {g: r for r, (g, _) in enumerate(sorted(freq.items(), key=itemgetter(1)))}
    ids_l = [sorted(map(rank.__getitem__, s)) for s in grams_l]
    ids_r = [sorted(map(rank.__getitem__, s)) for s in grams_r]
    sets_r = [frozenset(ids) for ids in ids_r]

    def cut(size: int) -> int:
        return size - math.ceil(threshold * size) + 1

    index: dict[int, list[int]] = defaultdict(list)
    for j, ids in enumerate(ids_r):
        for g in ids[:cut(len(ids))]:
            index[g].append(j)
    pairs = []
    for i, ids in enumerate(ids_l):
        if not ids:
            continue
        s = frozenset(ids)
        candidates = {j for g in ids[:cut(len(ids))] for j in index.get(g, ())}
        for j in candidates:
            r = sets_r[j]
            if min(len(s), len(r)) < threshold * max(len(s), len(r)):
                continue  # sizes alone rule it out
            score = len(s & r) / len(s | r)
            if score >= threshold:
                pairs.append(Pair(i, j, score))
    return sorted(pairs, key=lambda p: (-p.score, p.left, p.right))


def contained(needles: list[str], haystacks: list[str], min_chars: int = 20, n: int = 8) -> list[Pair]:
    """Every (i, j) where normalized needles[i] (at least `min_chars` long) occurs inside haystacks[j]."""
    hay = [normalize(h) for h in haystacks]
    hay_grams = [ngrams(h, n) for h in hay]
    freq = Counter(g for s in hay_grams for g in s)
    # A haystack holding a needle holds every n-gram of it: look only where its rarest n-gram is.
    wanted: dict[int, str] = {}
    for i, needle in enumerate(needles):
        t = normalize(needle)
        if len(t) < min_chars:
            continue
        grams = ngrams(t, n)
        if all(g in freq for g in grams):
            wanted[i] = min(grams, key=lambda g: (freq[g], g))
    where: dict[str, list[int]] = {g: [] for g in wanted.values()}
    for j, s in enumerate(hay_grams):
        for g in s & where.keys():
            where[g].append(j)
    pairs = []
    for i, gram in wanted.items():
        t = normalize(needles[i])
        pairs.extend(Pair(i, j, float(len(t))) for j in where[gram] if t in hay[j])
    return sorted(pairs, key=lambda p: (-p.score, p.left, p.right))
