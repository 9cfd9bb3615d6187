"""The strategy interface and its registry. The core knows no strategy by name.

A strategy turns (model, task pool, budget) into an Adaptation: a peft adapter directory, an
in-context prefix, or nothing, plus the cost of every phase that produced it.
"""
from __future__ import annotations

import abc
import difflib
import inspect
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from harness.budget import Budget, BudgetUse
from harness.costs import PhaseCost
from harness.errors import HarnessError
from harness.pricing import QueryPricer
from harness.tasks import TaskHandle


@dataclass
class AdaptContext:
    model: torch.nn.Module
    tokenizer: object
    task: TaskHandle
    budget: Budget
    settings: object  # the strategy's config node
    seed: int
    workdir: Path  # the cell's folder: adapters and logs go here
    device: torch.device
    progress: bool = True
    model_name: str = ""
    model_cfg: dict = field(default_factory=dict)  # resolved model config (keys of cached shared artifacts)
    shared_dir: Path | None = None  # artifacts shared by cells of one model (e.g. DnD's library, generators)
    pricing: QueryPricer | None = None  # what a query costs, with and without an adaptation (budgets × horizon)

    def __post_init__(self) -> None:
        if self.pricing is None:  # the runner passes one that knows the base model's output length
            from harness.flops import ModelShape

            self.pricing = QueryPricer(self.task, self.tokenizer, ModelShape.of(self.model))


@dataclass
class Adaptation:
    kind: str  # "none" | "prefix" | "adapter"
    labels_used: int = 0
    prefix: str | None = None
    adapter_dir: str | None = None
    costs: list[PhaseCost] = field(default_factory=list)
    budget: BudgetUse | None = None
    details: dict = field(default_factory=dict)
    # Extra cost on every query, relative to the base model (ICL's demonstrations, an unmerged adapter),
    # analytic, as priced before evaluation (ctx.pricing); the record compares it with evaluation's.
    per_query_extra_flops: float = 0.0
    lora_params: int = 0  # weights of the unmerged adapter served with every query (priced per token)
    # What this adaptation is when the seed changes more than chance (dnd_member: seed k is library LoRA k):
    # cells whose `variant` differs are separate rows of the report, never seeds of one row.
    variant: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["costs"] = [c.to_dict() for c in self.costs]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Adaptation":
        data = dict(data)
        data["costs"] = [PhaseCost.from_dict(c) for c in data.get("costs", [])]
        if data.get("budget"):
            data["budget"] = BudgetUse(**data["budget"])
        return cls(**data)


@dataclass(frozen=True)
class ReportPage:
    """A page of `harness report` that a strategy contributes (e.g. DnD's leave-one-out table)."""

    filename: str  # in the report folder, e.g. dnd_loo.md
    title: str
    intro: str
    render: Callable[[list], str | None]  # finished records [(folder, record)] → Markdown; None leaves it out


@dataclass(frozen=True)
class Prerequisite:
    """A shared artifact a cell builds before it adapts (Strategy.prerequisites). Under a launcher, `harness run`
    builds each phase's prerequisites of all the sweep's cells as one wave of jobs (equal keys: one job), the phases
    in the order the strategies list them, then runs the cells."""

    phase: str  # e.g. "library", then "generator"
    key: str  # what is built: cells whose prerequisites share a key share one job
    item: str | None = None  # which one within the phase, e.g. the library task; None: the cell's own


class Strategy(abc.ABC):
    """What a strategy is to the harness: `adapt`, and hooks whose defaults suit a strategy that needs none.

    Subclass it and register the class under the entry point group `harness.strategies` (pyproject.toml:
    `name = "package.module:Class"`): the name is the config's `strategy.impl`. Every hook is called for
    every cell; a public method whose name is close to a hook's but is not one fails registration.
    """

    def validate(self, settings) -> None:
        """Check the settings (the strategy's config node) before any model is loaded or compute spent;
        raise HarnessError. Default: nothing to check."""

    def validate_cell(self, cfg) -> None:
        """Check what needs the whole cell (e.g. that the target task is not in DnD's library).
        Default: nothing to check."""

    def uses_seed(self, settings) -> bool:
        """Whether the seed changes what adapt computes. False: every seed is run once, as the seed-0 cell.
        Default: True."""
        return True

    def adapts_images(self, settings) -> bool:
        """Whether adapt handles a task whose items show images, on a vision-language model (training through the
        model's processor, LoRA on its language model only). False: the runner refuses such a cell with a one-line
        error. Default: False."""
        return False

    def fingerprint(self, settings) -> str | None:
        """A digest of inputs outside the config that the adaptation reads (an adapter folder's files): a new
        digest makes a new cell. Default: None (the config says everything)."""
        return None

    def reads_tasks(self, cfg) -> list[str]:
        """Other tasks (configs/task/) whose data the adaptation learns from (DnD's library): their data
        fingerprints key the cell. Default: none."""
        return []

    def one_off_phases(self, settings) -> tuple[str, ...]:
        """The one-off phases (e.g. collect, meta_train) whose cost this strategy shares with other target tasks
        (its PhaseCosts with shared_by set, which the budget's one_off policy charges and the report amortizes);
        the runner refuses an adaptation that books an undeclared one. Default: none."""
        return ()

    def prerequisites(self, cfg) -> list[Prerequisite]:
        """The shared artifacts the cell `cfg` builds before it adapts, in dependency order (DnD: each library LoRA,
        then the generator). Only a launcher's sweep uses them, to build them in parallel waves before the cells;
        `adapt` still builds whatever is missing. Cheap: no model or data is loaded. Default: none."""
        return []

    def prepare(self, ctx: AdaptContext, need: Prerequisite) -> None:
        """Build one of the cell's prerequisites (reusing it when it is already built), with the checks `adapt` makes
        before spending compute. Called only for what `prerequisites` lists. Default: nothing to build."""

    def report_pages(self) -> list[ReportPage]:
        """Pages this strategy adds to `harness report`. Default: none."""
        return []

    def list_pages(self) -> dict[str, Callable[[], None]]:
        """`harness list NAME` pages this strategy adds: NAME → a function printing the page. Default: none."""
        return {}

    @abc.abstractmethod
    def adapt(self, ctx: AdaptContext) -> Adaptation:
        """Turn (model, task pool, budget) into an Adaptation with the cost of every phase that made it."""


HOOKS = tuple(name for name in vars(Strategy) if not name.startswith("_"))
GROUP = "harness.strategies"  # the entry point group strategies register under
STRATEGIES: dict[str, type[Strategy]] = {}
_LOADED = False


def register(name: str, cls: type) -> type[Strategy]:
    """Check `cls` against the protocol and register it as `name` (what the entry points loader calls)."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise HarnessError(f"strategy {name!r}: {cls!r} is not a subclass of harness.strategy.Strategy: "
                           "derive it from Strategy")
    if inspect.isabstract(cls):
        raise HarnessError(f"strategy {name!r}: {cls.__name__} defines no adapt method: add one")
    ours = [k for k in cls.__mro__ if k not in (Strategy, object)  # its helper bases, not other libraries' classes
            and (issubclass(k, Strategy) or k.__module__.split(".")[0] == cls.__module__.split(".")[0])]
    for klass in ours:
        for attr in vars(klass):
            if attr.startswith("_") or attr in HOOKS:
                continue
            close = difflib.get_close_matches(attr, HOOKS, n=1, cutoff=0.75)
            if close:
                raise HarnessError(f"strategy {name!r}: {klass.__name__}.{attr} is not a strategy hook, and would "
                                   f"never be called: did you mean {close[0]}? (a helper of that name: start it "
                                   "with _)")
    other = STRATEGIES.get(name)
    if other is not None and other is not cls:
        raise HarnessError(f"strategy {name!r} is registered twice ({other.__module__}.{other.__name__} and "
                           f"{cls.__module__}.{cls.__name__}): uninstall one of the packages that provide it")
    STRATEGIES[name] = cls
    return cls


def strategies() -> dict[str, type[Strategy]]:
    """Every registered strategy, loaded once from the `harness.strategies` entry points of installed packages."""
    global _LOADED
    if not _LOADED:
        # Every distribution's entries, not only the first of each name on sys.path: a checkout's stale
        # *.egg-info (left by a wheel build) would otherwise hide the installed metadata.
        entries = {(e.name, e.value): (e, d.metadata["Name"]) for d in metadata.distributions()
                   for e in d.entry_points.select(group=GROUP)}
        for entry, dist in entries.values():
            try:
                cls = entry.load()
            except Exception as exc:
                where = f" of {dist}" if dist else ""
                raise HarnessError(f"strategy {entry.name!r} (entry point {entry.value}{where}) cannot be imported "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): fix or "
                                   "reinstall the package that provides it") from None
            register(entry.name, cls)
        _LOADED = True
    return STRATEGIES


def image_strategies() -> list[str]:
    """The registered strategy implementations that adapt on tasks with images (`adapts_images`)."""
    return sorted(name for name, cls in strategies().items() if cls().adapts_images(None))


def get_strategy(name: str) -> Strategy:
    registered = strategies()
    if name not in registered:
        raise HarnessError(f"unknown strategy implementation {name!r} (registered: {', '.join(sorted(registered))}): "
                           f"use one of those, or reinstall the package that adds it to the entry points {GROUP} "
                           "(make setup)")
    return registered[name]()


def _pages(collect: Callable[[Strategy], dict], what: str) -> dict:
    """name → page over every registered strategy; strategies of one package may offer the same page."""
    out: dict = {}
    for impl, cls in sorted(strategies().items()):
        for key, page in collect(cls()).items():
            if key in out and out[key] != page:
                raise HarnessError(f"{what} {key!r} is offered by two different strategies (the second: {impl}): "
                                   "rename one")
            out[key] = page
    return out


def report_pages() -> dict[str, ReportPage]:
    """filename → ReportPage, from every registered strategy."""
    return _pages(lambda s: {p.filename: p for p in s.report_pages()}, "report page")


def list_pages() -> dict[str, Callable[[], None]]:
    """`harness list NAME` pages, from every registered strategy."""
    return _pages(lambda s: s.list_pages(), "`harness list` page")


def check_one_off(strategy: Strategy, settings, adaptation: Adaptation) -> None:
    """An adaptation may share only the one-off phases its strategy declares (the report amortizes them)."""
    declared = set(strategy.one_off_phases(settings))
    shared = sorted({c.phase for c in adaptation.costs if c.shared_by and c.phase not in declared})
    if shared:
        raise TypeError(f"{type(strategy).__name__} charges shared one-off phases {shared} that its one_off_phases() "
                        f"does not declare ({sorted(declared)}): declare them")
