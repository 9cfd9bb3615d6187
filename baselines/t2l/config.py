"""Hypernetwork presets (the paper's base models, Qwen2.5 beside DnD's, SmolLM2 on CPU) and T2L's settings.

A preset fixes the hypernetwork's widths (`latent`, `head_in`) and the LoRA it is built for: the base model's
layers and, per adapted module, its (in, out) features. The model in a run must have exactly that layout (checked
before any compute). The description encoder's width comes from the encoder itself.
"""
from __future__ import annotations

from dataclasses import dataclass

from baselines.dnd.library import CollectSettings
from baselines.t2l.model import VARIANTS, LoraShape
from harness.config_checks import as_float, as_int
from harness.errors import HarnessError

MODES = ("recon", "sft")
DESCRIPTIONS = ("aligned", "unaligned", "random")


@dataclass(frozen=True)
class HypernetPreset:
    name: str
    latent: int
    head_in: int
    shape: LoraShape
    note: str = ""

    def check_fits(self, shape: LoraShape, model_name: str, fitting: list[str]) -> None:
        if shape != self.shape:
            fix = (f"set strategy.hypernet.preset to {' or '.join(fitting)}" if fitting else
                   "no preset fits this model: add one (harness list t2l-presets shows their shapes)")
            raise HarnessError(f"T2L preset {self.name} emits a {_describe(self.shape)} LoRA; {model_name} needs "
                               f"{_describe(shape)}: {fix}")


def _describe(shape: LoraShape) -> str:
    mods = ", ".join(f"{m} {i}→{o}" for m, i, o in shape.modules)
    return f"rank-{shape.rank}, {shape.n_layers}-layer ({mods})"


def _qv(layers: int, hidden: int, kv: int, rank: int = 8) -> LoraShape:
    return LoraShape(layers, rank, (("q_proj", hidden, hidden), ("v_proj", hidden, kv)))


ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")


def _all(layers: int, hidden: int, inter: int, kv: int, rank: int) -> LoraShape:
    """Every projection of a Llama-style decoder, DnD's library layout."""
    return LoraShape(layers, rank, (("q_proj", hidden, hidden), ("k_proj", hidden, kv), ("v_proj", hidden, kv),
                                    ("o_proj", hidden, hidden), ("up_proj", hidden, inter),
                                    ("gate_proj", hidden, inter), ("down_proj", inter, hidden)))


PRESETS: dict[str, HypernetPreset] = {p.name: p for p in [
    # The paper's three base models at the widths of its paper and its Mistral script (latent 128, head 512); the
    # shipped Llama and Gemma scripts train 4x wider hypernetworks (latent 512, head 2048).
    HypernetPreset("mistral-7b", 128, 512, _qv(32, 4096, 1024), "Mistral-7B-Instruct-v0.2, the paper's main base"),
    HypernetPreset("llama-3.1-8b", 128, 512, _qv(32, 4096, 1024), "Llama-3.1-8B-Instruct at the paper's widths"),
    HypernetPreset("gemma-2-2b", 128, 512, LoraShape(26, 8, (("q_proj", 2304, 2048), ("v_proj", 2304, 1024))),
                   "gemma-2-2b-it at the paper's widths"),
    # Qwen2.5, so that T2L and DnD adapt the same base from one library: DnD's layout there (every projection; rank
    # 8 for 0.5B, 16 for 1.5B and 7B), not the paper's q/v rank 8
    HypernetPreset("qwen2.5-0.5b", 128, 512, _all(24, 896, 4864, 128, 8),
                   "Qwen2.5-0.5B-Instruct, DnD's commonsense library layout"),
    HypernetPreset("qwen2.5-1.5b", 128, 512, _all(28, 1536, 8960, 256, 16),
                   "Qwen2.5-1.5B-Instruct, DnD's math and code library layout"),
    HypernetPreset("qwen2.5-7b", 128, 512, _all(28, 3584, 18944, 512, 16), "Qwen2.5-7B-Instruct, DnD's library layout"),
    # CPU: SmolLM2-135M at the paper's widths (its LoRA is small, so the hypernetwork is too: heads 7.9 M for L)
    HypernetPreset("smollm2", 128, 512, _qv(30, 576, 192), "SmolLM2-135M-Instruct on CPU (q, v as DnD's CPU library)"),
    # the tiny random test model: every projection, since its DnD preset's library adapts all seven
    HypernetPreset("tiny-random", 32, 64, _all(2, 64, 128, 32, 8), "the tiny random test model"),
]}


def get_preset(name: str) -> HypernetPreset:
    if name not in PRESETS:
        raise HarnessError(f"unknown T2L preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def shape_of_model(model, rank: int, targets) -> LoraShape:
    """The LoRA layout of `model` for `targets` at `rank` (works on the meta device): its layer count and, per
    target in the library's order, one (in, out) that every layer must share."""
    import re

    import torch

    found: dict[str, set] = {}
    layers = set()
    for name, module in model.named_modules():
        leaf = name.split(".")[-1]
        if isinstance(module, torch.nn.Linear) and leaf in targets:
            found.setdefault(leaf, set()).add((module.in_features, module.out_features))
            match = re.search(r"layers\.(\d+)\.", name)
            if match:
                layers.add(int(match.group(1)))
    order = [t for t in ALL if t in targets] + sorted(t for t in targets if t not in ALL)
    missing = [t for t in order if t not in found]
    if missing or not layers:
        raise HarnessError(f"T2L: the model has no layers.N.{missing[0] if missing else '*'} Linear module to adapt")
    odd = [t for t in order if len(found[t]) != 1]
    if odd:
        raise HarnessError(f"T2L: the model's {odd[0]} differs in shape from layer to layer; the hypernetwork emits "
                           "one shape per module type")
    return LoraShape(len(layers), int(rank), tuple((t, *next(iter(found[t]))) for t in order))


def presets_fitting(shape: LoraShape) -> list[str]:
    return [p.name for p in PRESETS.values() if p.shape == shape]


def print_presets() -> None:
    """`harness list t2l-presets`: each preset's size per variant (counted on the meta device, gte-large input)."""
    import torch

    from baselines.t2l.model import HyperModulator

    for p in PRESETS.values():
        sizes = []
        for variant in VARIANTS:
            with torch.device("meta"):
                net = HyperModulator(p.shape, 1024, variant, p.latent, p.head_in)
            sizes.append(f"{variant} {sum(t.numel() for t in net.parameters()) / 1e6:.2f} M")
        print(f"{p.name:14s} {', '.join(sizes)} (1024-d descriptions); emits {_describe(p.shape)}, "
              f"{p.shape.lora_params / 1e6:.2f} M LoRA weights: {p.note}")


@dataclass(frozen=True)
class HypernetSettings:
    """t2l.yaml's `hypernet`: which hypernetwork and how it is trained (`meta_train`, one-off and shared)."""

    preset: str | None  # null: the model config's t2l_preset
    variant: str  # L, M or S
    mode: str  # recon: L1 to the library LoRAs; sft: next-token loss through the frozen base model
    steps: int
    tasks_per_batch: int
    lr: float
    weight_decay: float
    warmup_frac: float
    grad_clip: float
    seed: int
    log_every: int

    def __post_init__(self) -> None:
        if self.preset is not None:
            get_preset(self.preset)
        if self.variant not in VARIANTS:
            raise HarnessError(f"strategy.hypernet.variant must be one of {', '.join(VARIANTS)} (got {self.variant!r})")
        if self.mode not in MODES:
            raise HarnessError(f"strategy.hypernet.mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        as_int(self.steps, "strategy.hypernet.steps", minimum=1)
        as_int(self.tasks_per_batch, "strategy.hypernet.tasks_per_batch", minimum=1)
        as_int(self.log_every, "strategy.hypernet.log_every", minimum=1)
        as_float(self.lr, "strategy.hypernet.lr", positive=True)
        if not 0 <= float(self.warmup_frac) < 1:
            raise HarnessError(f"strategy.hypernet.warmup_frac must be in [0, 1) (got {self.warmup_frac})")


@dataclass(frozen=True)
class LibrarySettings:
    """The library keys that t2l, multitask_lora and arrow share with dnd (configs/library/): which tasks, how each
    task's LoRA is trained, and `library_preset`, the DnD generator preset that fixes the LoRAs' layout and recipe
    (null: the model's dnd_preset), so that every method learns from the same LoRAs."""

    library_preset: str | None
    universe: list[str] | None
    library: list[str] | None
    targets: list[str] | None
    collect: CollectSettings

    def __post_init__(self) -> None:
        if self.library_preset is not None:
            from baselines.dnd.config import get_preset as dnd_preset

            dnd_preset(self.library_preset)
        if self.library is None and not self.universe:
            raise HarnessError("set strategy.library (tasks to learn from) or strategy.universe (leave-one-out)")

    def resolved_collect(self, model_cfg: dict, model_name: str) -> CollectSettings:
        """`collect` with its null keys from the recipe of the library's DnD preset."""
        from baselines.dnd.config import get_preset as dnd_preset

        name = self.library_preset or model_cfg.get("dnd_preset")
        if not name:
            raise HarnessError(f"model {model_name} names no dnd_preset, which fixes the library's LoRA layout: set "
                               "strategy.library_preset (harness list dnd-presets)")
        return self.collect.for_preset(dnd_preset(str(name)))


@dataclass(frozen=True)
class T2LSettings(LibrarySettings):
    """configs/strategy/t2l.yaml, built with harness.strategy_settings.settings_from: the library's keys, and T2L's."""

    encoder: str  # the description encoder: a sentence-transformers name, or base_last_token
    hypernet: HypernetSettings
    descriptions: str  # aligned (the target's evaluation descriptions), unaligned (other tasks'), random
    description: str | None  # the user's own description of the target (overrides `descriptions`)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.descriptions not in DESCRIPTIONS:
            raise HarnessError(f"strategy.descriptions must be one of {', '.join(DESCRIPTIONS)} "
                               f"(got {self.descriptions!r})")
        if self.description is not None and not str(self.description).strip():
            raise HarnessError("strategy.description is empty: write a sentence describing the task, or set it null")
