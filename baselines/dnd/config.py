"""Generator presets: the paper's decoders for Qwen2.5 and small ones sized for SmolLM2 on CPU.

A preset fixes the condition shape (N prompts × L tokens × encoder width), the decoder cascade
(C, H, W after each layer) and the LoRA token layout it emits (n_tokens × (r+2) × (w+2)).
"""
from __future__ import annotations

from dataclasses import dataclass

from baselines.dnd.library import CollectSettings, fill_from_recipe
from baselines.dnd.tokenizer import MODULE_ORDER
from harness.config_checks import as_float, as_int
from harness.errors import HarnessError


@dataclass(frozen=True)
class GeneratorPreset:
    name: str
    features: tuple[tuple[int, int, int], ...]  # (C, H, W) of the input and after every layer
    kernel: int | tuple[int, ...]  # one kernel for all layers, or one per layer
    n_prompts: int  # N: prompts per condition
    prompt_tokens: int  # L: encoder tokens per prompt (padded; > 512 is encoded in 512-token chunks)
    rank: int
    width: int  # chunk width w of the LoRA tokenizer
    project_to: int | None = None  # long prompts: Linear(L→P), SiLU, Linear(P→P) along the token axis
    encoder_dim: int = 384
    note: str = ""
    targets: tuple[str, ...] = MODULE_ORDER  # the projections its LoRAs adapt (the paper: all seven)
    mean_base: bool = False  # add a learned token tensor started at the library's mean tokens (not the paper's)

    def kernels(self) -> tuple[int, ...]:
        n = len(self.features) - 1
        return tuple(self.kernel) if isinstance(self.kernel, (tuple, list)) else (int(self.kernel),) * n

    @property
    def n_tokens(self) -> int:
        return self.features[-1][0]

    @property
    def token_shape(self) -> tuple[int, int]:
        return self.features[-1][1], self.features[-1][2]

    def check(self) -> None:
        n = len(self.features) - 1
        if n < 1 or len(self.kernels()) != n:
            raise HarnessError(f"generator preset {self.name}: needs >= 2 feature shapes and one kernel per layer")
        c, h, w = self.features[0]
        if (c, h, w) != (self.n_prompts, self.project_to or self.prompt_tokens, self.encoder_dim):
            raise HarnessError(f"generator preset {self.name}: input shape {self.features[0]} must be (n_prompts, "
                               f"project_to or prompt_tokens, encoder_dim) = ({self.n_prompts}, "
                               f"{self.project_to or self.prompt_tokens}, {self.encoder_dim})")
        if self.token_shape != (self.rank + 2, self.width + 2):
            raise HarnessError(f"generator preset {self.name}: output tokens {self.token_shape} must be "
                               f"(rank+2, width+2) = ({self.rank + 2}, {self.width + 2})")

    def check_fits(self, n_tokens: int, rank: int, width: int, model_name: str, model=None) -> None:
        """One-line error when the preset cannot emit the base model's LoRA, naming the presets that can (those
        that fit `model`, looked for only when this one does not)."""
        if (self.n_tokens, self.rank, self.width) != (n_tokens, rank, width):
            fitting = presets_fitting(model) if model is not None else []
            fix = (f"set strategy.preset to {' or '.join(fitting)}" if fitting else
                   "no preset fits this model: add one (harness list dnd-presets shows their shapes)")
            raise HarnessError(
                f"generator preset {self.name} emits {self.n_tokens} tokens for rank {self.rank}, width {self.width}; "
                f"a rank-{rank} LoRA of {model_name} needs {n_tokens} tokens of width {width}: {fix}")

    def fits(self, model) -> bool:
        """Whether this preset emits exactly the rank-`self.rank` LoRA of `model` (its shapes; works on the meta
        device)."""
        from baselines.dnd.tokenizer import LoraTokenizer, shapes_of_model

        try:
            tok = LoraTokenizer(shapes_of_model(model, self.rank, self.targets), self.rank, self.width)
        except HarnessError:
            return False
        return tok.n_tokens == self.n_tokens


def _paper(name, kernel, prompts, tokens, feats, rank, width, project=None, note="", targets=MODULE_ORDER,
           mean_base=False):
    return GeneratorPreset(name, tuple(feats), kernel, prompts, tokens, rank, width, project, note=note,
                           targets=tuple(targets), mean_base=mean_base)


QV = ("q_proj", "v_proj")  # the CPU presets' LoRA targets, as Text-to-LoRA adapts


PRESETS: dict[str, GeneratorPreset] = {p.name: p for p in [
    _paper("qwen2.5-0.5b", 9, 128, 384,
           [(128, 384, 384), (128, 200, 300), (128, 100, 256), (256, 50, 200), (512, 50, 200), (1024, 25, 200),
            (1024, 10, 200), (2048, 10, 200), (4296, 10, 130)], 8, 128,
           note="the paper's commonsense decoder for Qwen2.5-0.5B, r8 (about 1.11 B parameters)"),
    _paper("qwen2.5-1.5b", 11, 32, 4608,
           [(32, 1000, 384), (64, 500, 300), (256, 500, 300), (512, 125, 300), (1024, 64, 256), (2048, 32, 256),
            (4508, 18, 258)], 16, 256, project=1000, note="the paper's math decoder for Qwen2.5-1.5B, r16"),
    _paper("qwen2.5-1.5b-code", 11, 16, 26624,
           [(16, 1000, 384), (64, 500, 300), (256, 125, 300), (512, 64, 300), (1024, 64, 256), (2048, 32, 256),
            (4508, 18, 258)], 16, 256, project=1000, note="the paper's coding decoder for Qwen2.5-1.5B, r16"),
    _paper("qwen2.5-7b", 11, 16, 4608,
           [(16, 1000, 384), (64, 500, 384), (256, 125, 400), (512, 64, 400), (1024, 64, 400), (2048, 32, 400),
            (4928, 18, 514)], 16, 512, project=1000, note="the paper's math decoder for Qwen2.5-7B, r16"),
    _paper("qwen2.5-vl-3b", 11, 16, 1536,
           [(16, 1536, 384), (64, 500, 300), (256, 125, 300), (1024, 64, 300), (2048, 16, 256), (7308, 18, 258)], 16,
           256, note="the paper's multimodal decoder for Qwen2.5-VL-3B, r16 on the language model's 36 layers"),
    # CPU scale (results/dnd/README.md has the search): SmolLM2-135M r8 LoRAs on q_proj and v_proj only, width 192
    # (the gcd of 576 and 192): 300 tokens of 10 x 194. The last layer sees 256 channels through a 3 x 3 kernel (2304
    # inputs per output value, at least the 1940 values of a token), and the decoder adds a learned tensor started
    # at the library's mean tokens: the paper's all-module layout and narrow CPU decoders stayed near cosine 0.
    _paper("smollm2-small", (1, 3, 3), 16, 48,
           [(16, 48, 384), (32, 16, 256), (256, 10, 194), (300, 10, 194)], 8, 192,
           note="SmolLM2-135M r8 (q, v) on CPU: the leave-one-out and speedup experiments", targets=QV,
           mean_base=True),
    # tiny-random (2 layers, hidden 64): 64 tokens of 10 x 34, for tests; 48 channels through a 3 x 3 kernel (432
    # inputs per output value, at least a token's 340) and the learned mean tokens, as smollm2-small.
    _paper("tiny-random", 3, 4, 16, [(4, 16, 384), (48, 10, 34), (64, 10, 34)], 8, 32,
           note="the tiny random test model", mean_base=True),
]}


def presets_fitting(model) -> list[str]:
    """The presets whose generators emit this model's LoRA layout."""
    return [p.name for p in PRESETS.values() if p.fits(model)]


def get_preset(name: str) -> GeneratorPreset:
    if name not in PRESETS:
        raise HarnessError(f"unknown DnD generator preset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    preset.check()
    return preset


@dataclass(frozen=True)
class MetaTrainSettings:
    """dnd.yaml's `meta_train`: how the generator is trained (values in the YAML only). Keys left null there
    come from the generator preset's recipe (`for_preset`)."""

    steps: int | None
    batch_size: int | None
    lr: float | None
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    condition_noise: float
    target_noise: float
    seed: int
    log_every: int

    def __post_init__(self) -> None:
        as_int(self.steps, "strategy.meta_train.steps", minimum=1, allow_none=True)
        as_int(self.batch_size, "strategy.meta_train.batch_size", minimum=1, allow_none=True)
        if self.lr is not None:
            as_float(self.lr, "strategy.meta_train.lr", positive=True)
        as_int(self.log_every, "strategy.meta_train.log_every", minimum=1)

    def for_preset(self, preset: GeneratorPreset) -> "MetaTrainSettings":
        """These settings with their null keys (steps, batch, rate) from the preset's recipe."""
        return fill_from_recipe(self, preset.name, "meta_train")


@dataclass(frozen=True)
class DnDSettings:
    """configs/strategy/dnd.yaml, built with harness.strategy_settings.settings_from."""

    preset: str | None  # null: the model config's dnd_preset
    encoder: str
    universe: list[str] | None
    library: list[str] | None  # null: the universe minus the target (leave-one-out)
    targets: list[str] | None  # targets sharing the one-off costs; null: the universe
    bank: int
    collect: CollectSettings
    meta_train: MetaTrainSettings

    def __post_init__(self) -> None:
        if self.preset is not None:
            get_preset(self.preset)
        as_int(self.bank, "strategy.bank", minimum=1)
        if self.library is None and not self.universe:
            raise HarnessError("DnD: set strategy.library (tasks to learn from) or strategy.universe (leave-one-out)")


@dataclass(frozen=True)
class LibraryControlSettings(DnDSettings):
    """configs/strategy/dnd_{member,mean,nearest}.yaml: DnD's settings (its library) and which control."""

    mode: str  # member, mean or nearest
    member: int | None = None  # only dnd_member.yaml sets it; null: the cell's seed picks the library task

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("member", "mean", "nearest"):
            raise HarnessError(f"strategy.mode must be member, mean or nearest (got {self.mode!r})")
        as_int(self.member, "strategy.member", minimum=0, allow_none=True)


def print_presets() -> None:
    """`harness list dnd-presets`: each preset's shapes and size (counted on the meta device)."""
    import torch

    from baselines.dnd.model import Generator

    for p in PRESETS.values():
        with torch.device("meta"):
            gen = Generator(p)
        params = sum(t.numel() for t in gen.parameters())
        print(f"{p.name:18s} {params / 1e6:8.2f} M params, {gen.flops() / 1e12:7.3f} TFLOP/generation, "
              f"condition {p.n_prompts}×{p.prompt_tokens}, emits {p.n_tokens}×{p.token_shape[0]}×{p.token_shape[1]}"
              f" (r{p.rank}, w{p.width}): {p.note}")
