"""The augment phase of ICL-augmented fine-tuning (Lampinen et al. 2025): a model, prompted in context, writes
new training statements, metered like every phase.

- **local**: each training unit alone (a sentence of a document, or a labeled example) in a prompt with a few
  demonstrations; the model writes rephrasings, reversed relations and direct implications (for a labeled task:
  a paraphrase of the question that keeps its answer).
- **global**: the training set (or a shard of it, when it exceeds the generator's window) in context as a shared
  prefix, then one document; the model writes inferences linking it to the rest (for a labeled task: why its
  answer is right). The prefix is encoded once per shard into a KV cache that every document's continuation
  reads (`prefix_cache: true`), and counted once; without the cache every document re-encodes it.

Decoding is a plain loop over the model's forward with a KV cache, so every forward is counted: measured by the
FLOP counter (exactly, or derived from an exact linear fit of earlier live counts: harness/flops.py) and
analytically (`ModelShape.forward_cached`). Outputs are cut at the prompt file's stop strings, split into lines
and sentences, deduplicated against each other and the originals, and (optionally) dropped when they use a word
that neither the training data nor the prompts contain: with nonsense entities a model tends to "correct"
unfamiliar words into real ones, which would train facts about entities that do not exist.
"""
from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from harness.costs import PhaseMeter
from harness.errors import HarnessError
from harness.flops import ModelShape
from harness.settings import CONFIG_DIR

PROMPTS_DIR = CONFIG_DIR / "icl_aug_prompts"
PROMPT_KEYS = ("local", "global_header", "global_document", "global_ask", "stop")
_WORD = re.compile(r"[A-Za-z]+")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|\(\w\))\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+")


@dataclass(frozen=True)
class Prompts:
    name: str
    path: Path
    local: str
    global_header: str
    global_document: str
    global_ask: str
    stop: tuple[str, ...]

    @classmethod
    def load(cls, name: str) -> "Prompts":
        path = PROMPTS_DIR / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml")))
            raise HarnessError(f"augmentation prompts {name!r} not found ({path}): use one of {known}, or add the "
                               "file")
        data = yaml.safe_load(path.read_text()) or {}
        missing = [k for k in PROMPT_KEYS if k not in data]
        if missing:
            raise HarnessError(f"augmentation prompts {path}: missing key(s) {', '.join(missing)}: add them")
        return cls(name, path, str(data["local"]), str(data["global_header"]), str(data["global_document"]),
                   str(data["global_ask"]), tuple(str(s) for s in data["stop"]))

    def words(self) -> set[str]:
        """Every word the prompts themselves use (allowed in outputs: they are the instructions' own words)."""
        text = " ".join((self.local, self.global_header, self.global_document, self.global_ask))
        return {w.lower() for w in _WORD.findall(text)}


@dataclass(frozen=True)
class Unit:
    """One thing augmentation reads: a statement (knowledge tasks) or a labeled example (question, answer)."""

    doc: int  # the pool document it comes from
    context: str  # the prompt it is trained under (a document's prefix line; a task's question)
    text: str  # the statement or the gold completion


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def parse_statements(raw: str, stops: tuple[str, ...], min_words: int = 3) -> list[str]:
    """Statements in a generated text: cut at the first stop string, one per line and sentence, bullets and
    quotes removed, each ending with a full stop; lines that only introduce a list (ending with ':') dropped."""
    cut = len(raw)
    for stop in stops:
        at = raw.find(stop)
        if at >= 0:
            cut = min(cut, at)
    out = []
    for line in raw[:cut].splitlines():
        line = _BULLET.sub("", line).strip().strip('"').strip()
        if not line or line.endswith(":"):
            continue
        for sentence in split_sentences(line):
            sentence = sentence.strip().strip('"').rstrip(".!?;, ").strip()
            if len(sentence.split()) >= min_words:
                out.append(sentence + ".")
    return out


def normalized(statement: str) -> str:
    return " ".join(statement.lower().rstrip(".").split())


@dataclass
class AugmentStats:
    """What augmentation produced and dropped (stored in the record)."""

    units: int = 0
    outputs: int = 0
    parsed: int = 0
    duplicates: int = 0
    unknown_word: int = 0
    kept: int = 0
    shards: int = 0
    prefix_passes: int = 0
    prefix_tokens: int = 0
    generated_tokens: int = 0
    examples_raw: list = field(default_factory=list)  # a few raw outputs, to read what the model wrote

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def add(self, other: "AugmentStats") -> None:
        """Fold in the counts of another run (another kind of augmentation)."""
        for name, value in vars(other).items():
            if name == "examples_raw":
                self.examples_raw = (self.examples_raw + value)[:3]
            else:
                setattr(self, name, getattr(self, name) + value)


class Decoder:
    """Greedy or sampled decoding by a plain forward loop over a KV cache; every forward metered."""

    def __init__(self, model, tokenizer, meter: PhaseMeter | None, chat: bool, name: str) -> None:
        self.model, self.tokenizer, self.meter, self.name = model, tokenizer, meter, name
        self.shape = ModelShape.of(model)
        self.device = next(model.parameters()).device
        self.window = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.chat = chat and bool(getattr(tokenizer, "chat_template", None))
        self.eos = {t for t in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)) if t is not None}

    def wrap(self, text: str) -> tuple[str, str]:
        """(before, after) a user message in the chat template (("", "") without one)."""
        if not self.chat:
            return "", ""
        marker = "\x00"
        full = self.tokenizer.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=True,
                                                  tokenize=False)
        before, _, after = full.partition(marker)
        return before, after

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def check_fits(self, tokens: int, new: int, what: str, fix: str) -> None:
        if self.window and tokens + new > self.window:
            raise HarnessError(f"generator {self.name}: {what} of {tokens} tokens + {new} new tokens exceeds its "
                               f"context window ({self.window}): {fix}")

    @torch.no_grad()
    def forward(self, ids: list[int], cache, cached: int):
        """Logits of the last position after `ids`, over a cache of `cached` positions; the cache it returns."""
        n = len(ids)
        tensor = torch.tensor([ids], device=self.device)
        with self.meter.tally.count_linear(("augment_forward",), (n, n * (cached + n), 1)):
            out = self.model(input_ids=tensor, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.meter.add(flops_analytic=self.shape.forward_cached(1, n, cached, logits=1), tokens=n)
        return out.logits[0, -1].float(), out.past_key_values

    def prefill(self, ids: list[int]):
        """A shared prefix's KV cache, computed once."""
        _, cache = self.forward(ids, None, 0)
        return cache

    def complete(self, ids: list[int], max_new: int, stops: tuple[str, ...], temperature: float,
                 rng: torch.Generator | None, cache=None, cached: int = 0) -> tuple[str, int]:
        """The text generated after `ids` (over an optional cache of a prefix), and how many tokens it took."""
        if cache is not None:
            cache = copy.deepcopy(cache)  # each continuation extends its own copy of the shared prefix
        logits, cache = self.forward(ids, cache, cached)
        position = cached + len(ids)
        out: list[int] = []
        while len(out) < max_new:
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=rng))
            else:
                token = int(torch.argmax(logits))
            if token in self.eos:
                break
            out.append(token)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            if any(s in text for s in stops) or len(out) == max_new:
                break
            logits, cache = self.forward([token], cache, position)
            position += 1
        return self.tokenizer.decode(out, skip_special_tokens=True), len(out)

    def predict(self, prompt: int, new: int, cached: int = 0) -> float:
        """Analytic FLOPs of `complete` at most: the prompt over `cached` positions, then new - 1 decode steps."""
        total = self.shape.forward_cached(1, prompt, cached, logits=1)
        for i in range(1, max(new, 1)):
            total += self.shape.forward_cached(1, 1, cached + prompt + i - 1, logits=1)
        return float(total)


@dataclass(frozen=True)
class AugmentPlan:
    """What one augmentation run does, settled before any compute (so a budget can refuse it first)."""

    local: list[tuple[Unit, list[int]]]  # (unit, prompt ids)
    shards: list[tuple[list[int], list[tuple[Unit, list[int]]]]]  # (prefix ids, [(document unit, suffix ids)])
    flops_local: float  # analytic FLOPs of the local outputs if every one runs to its token cap
    flops_global: float  # ... of the global ones
    samples: int
    local_new: int
    global_new: int

    @property
    def flops_upper(self) -> float:
        return self.flops_local + self.flops_global

    def only(self, kind: str) -> "AugmentPlan":
        """The part of the plan that writes one kind of augmentation."""
        local = kind == "local"
        return AugmentPlan(self.local if local else [], [] if local else self.shards,
                           self.flops_local if local else 0.0, 0.0 if local else self.flops_global,
                           self.samples, self.local_new, self.global_new)


def question_of(prompt: str) -> str:
    """A labeled example's prompt without its answer cue (a last short line ending with ':')."""
    lines = prompt.rstrip().splitlines()
    if len(lines) > 1 and lines[-1].strip().endswith(":") and len(lines[-1].split()) <= 3:
        lines = lines[:-1]
    return "\n".join(lines).strip()


def _fill(template: str, unit: Unit, knowledge: bool) -> str:
    if knowledge:
        return template.replace("{context}", unit.context.strip()).replace("{statement}", unit.text.strip()) \
            .replace("{text}", unit.text.strip())
    return template.replace("{question}", question_of(unit.context)).replace("{answer}", unit.text.strip())


def plan(decoder: Decoder, prompts: Prompts, local_units: list[Unit], documents: list[Unit], kinds: tuple[str, ...],
         knowledge: bool, samples: int, local_new: int, global_new: int, rotations: int, shard_tokens: int | None,
         prefix_cache: bool, seed: int, ask: list[Unit] | None = None) -> AugmentPlan:
    """What augmentation will compute. Global shards pack every one of `documents` into context; only the documents
    in `ask` (all when None) get an output, and a shard holding none of them is skipped."""
    before, after = decoder.wrap("")
    asked = {id(d) for d in (documents if ask is None else ask)}
    local = []
    flops = flops_local = 0.0
    if "local" in kinds:
        for unit in local_units:
            ids = decoder.encode(before + _fill(prompts.local, unit, knowledge) + after)
            decoder.check_fits(len(ids), local_new, f"the local prompt of {prompts.path.name}",
                               "lower strategy.augment.max_new_tokens or shorten the prompt")
            local.append((unit, ids))
            flops_local += samples * decoder.predict(len(ids), local_new)
    shards = []
    if "global" in kinds and documents:
        suffixes = {id(d): decoder.encode(_fill(prompts.global_ask, d, knowledge) + after) for d in documents
                    if id(d) in asked}
        bodies = {id(d): decoder.encode(_fill(prompts.global_document, d, knowledge) + "\n\n") for d in documents}
        head = decoder.encode(before + prompts.global_header.split("{documents}")[0])
        tail = decoder.encode(prompts.global_header.split("{documents}", 1)[-1])
        longest = max(len(s) for s in suffixes.values())
        room = (decoder.window or 10 ** 9) - len(head) - len(tail) - longest - global_new
        if shard_tokens:
            room = min(room, shard_tokens)
        widest = max(len(b) for b in bodies.values())
        if room < widest:
            raise HarnessError(f"generator {decoder.name}: its context window ({decoder.window}) cannot hold the "
                               f"global prompt of {prompts.path.name} with even one document ({widest} tokens) and "
                               f"{global_new} new tokens: lower strategy.augment.global_max_new_tokens, raise "
                               "strategy.augment.shard_tokens, or use a generator with a longer context")
        for rotation in range(rotations):
            order = list(documents)
            random.Random(seed * 1000 + rotation).shuffle(order)
            packed: list[list[Unit]] = [[]]
            used = 0
            for doc in order:  # greedy packing: a shard is as many documents as its room holds
                if packed[-1] and used + len(bodies[id(doc)]) > room:
                    packed.append([])
                    used = 0
                packed[-1].append(doc)
                used += len(bodies[id(doc)])
            for shard in packed:
                items = [(d, suffixes[id(d)]) for d in shard if id(d) in asked]
                if not items:
                    continue
                prefix = head + [t for d in shard for t in bodies[id(d)]] + tail
                shards.append((prefix, items))
                if prefix_cache:
                    flops += decoder.predict(len(prefix), 1) + sum(decoder.predict(len(s), global_new, len(prefix))
                                                                   for _, s in items)
                else:
                    flops += sum(decoder.predict(len(prefix) + len(s), global_new) for _, s in items)
    return AugmentPlan(local, shards, flops_local, flops, samples, local_new, global_new)


def run(decoder: Decoder, prompts: Prompts, work: AugmentPlan, temperature: float, prefix_cache: bool, seed: int,
        progress: bool = True) -> tuple[list[tuple[Unit, str, str]], AugmentStats]:
    """Generate every planned output: [(unit, kind, raw text)] and counts."""
    from tqdm.auto import tqdm

    stats = AugmentStats(units=len(work.local))
    rng = torch.Generator().manual_seed(seed)
    raw: list[tuple[Unit, str, str]] = []
    total = len(work.local) * work.samples + sum(len(items) for _, items in work.shards)
    bar = tqdm(total=total, desc="augment", unit="output", disable=not progress, leave=False, mininterval=1.0)
    for unit, ids in work.local:
        for _ in range(work.samples):
            text, n = decoder.complete(ids, work.local_new, prompts.stop, temperature, rng)
            raw.append((unit, "local", text))
            stats.generated_tokens += n
            bar.update(1)
    for prefix, items in work.shards:
        stats.shards += 1
        cache = None
        if prefix_cache:
            cache = decoder.prefill(prefix)
            stats.prefix_passes += 1
            stats.prefix_tokens += len(prefix)
        for unit, suffix in items:
            if prefix_cache:
                text, n = decoder.complete(suffix, work.global_new, prompts.stop, temperature, rng, cache, len(prefix))
            else:
                text, n = decoder.complete(prefix + suffix, work.global_new, prompts.stop, temperature, rng)
                stats.prefix_passes += 1
                stats.prefix_tokens += len(prefix)
            raw.append((unit, "global", text))
            stats.generated_tokens += n
            bar.update(1)
    bar.close()
    stats.outputs = len(raw)
    stats.examples_raw = [{"kind": kind, "unit": unit.text[:200], "output": text[:400]} for unit, kind, text in raw[:3]]
    return raw, stats


def parse_passage(raw: str, stops: tuple[str, ...], first_line: bool) -> list[str]:
    """A labeled task's output as one piece: its first non-empty line (a rewritten question) or, for a rationale,
    its text up to the first stop, whitespace collapsed; nothing when it is shorter than three words."""
    cut = len(raw)
    for stop in stops:
        at = raw.find(stop)
        if at >= 0:
            cut = min(cut, at)
    text = raw[:cut].strip()
    if first_line:
        text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = " ".join(text.split()).strip('"').strip()
    return [text] if len(text.split()) >= 3 else []


def statements(raw: list[tuple[Unit, str, str]], prompts: Prompts, originals: list[str], vocabulary: set[str] | None,
               stats: AugmentStats, knowledge: bool = True) -> list[tuple[Unit, str, str]]:
    """(unit, kind, statement) parsed from the raw outputs, deduplicated against each other and the originals,
    and without words outside `vocabulary` (when given). Knowledge outputs are split into sentences; a labeled
    task's output is one paraphrase (local) or one rationale (global)."""
    seen = {normalized(o) for o in originals}
    allowed = None if vocabulary is None else vocabulary | prompts.words()
    out = []
    for unit, kind, text in raw:
        pieces = (parse_statements(text, prompts.stop) if knowledge
                  else parse_passage(text, prompts.stop, first_line=kind == "local"))
        for statement in pieces:
            stats.parsed += 1
            key = normalized(statement)
            if key in seen:
                stats.duplicates += 1
                continue
            if allowed is not None and any(w.lower() not in allowed for w in _WORD.findall(statement)):
                stats.unknown_word += 1
                continue
            seen.add(key)
            out.append((unit, kind, statement))
    stats.kept = len(out)
    return out


def vocabulary_of(texts: list[str]) -> set[str]:
    return {w.lower() for text in texts for w in _WORD.findall(text)}
