"""LoRA weights ⇄ parameter tokens, as DnD lays them out.

Per transformer layer, per module in a fixed order (q, k, v, o, up, gate, down), `A` (r × in) and
`Bᵀ` (r × out) are cut along their long side into r × w chunks. Each chunk is z-scored with its own
mean and std, and the two statistics are written into 2 extra rows and 2 extra columns, giving
(r+2) × (w+2) tokens: the generator predicts the scales with the values. Inverse: average the
replicated scale cells and undo the z-score.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from harness.errors import HarnessError

MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")
_KEY = re.compile(r"layers\.(\d+)\..*?(\w+_proj)\.lora_([AB])\.weight$")
_EPS = 1e-8


def encode_mean(mean: torch.Tensor) -> torch.Tensor:
    return mean * 8


def decode_mean(code: torch.Tensor) -> torch.Tensor:
    return code / 8


def encode_std(std: torch.Tensor) -> torch.Tensor:
    return torch.log(0.9 * std + 0.1) + 1.6


def decode_std(code: torch.Tensor) -> torch.Tensor:
    return ((torch.exp(code - 1.6) - 0.1) / 0.9).clamp_min(0)


@dataclass(frozen=True)
class Slot:
    key: str  # peft state-dict key
    transposed: bool  # B is stored out × r; tokenized as Bᵀ
    length: int  # the long side, cut into chunks of width w
    first: int  # index of its first token
    count: int


class LoraTokenizer:
    """The token layout of one model's LoRA (keys, shapes, rank) at chunk width `width`."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, width: int) -> None:
        self.rank, self.width = int(rank), int(width)
        slots, first = [], 0
        for key in sorted(shapes, key=_order):
            rows, cols = shapes[key]
            transposed = ".lora_B." in key
            r, length = (cols, rows) if transposed else (rows, cols)
            if r != self.rank:
                raise HarnessError(f"LoRA tensor {key} has rank {r}, the tokenizer expects {self.rank}")
            if length % self.width:
                raise HarnessError(f"LoRA tensor {key} ({rows}×{cols}) does not split into chunks of width "
                                   f"{self.width}: choose a width that divides {length}")
            slots.append(Slot(key, transposed, length, first, length // self.width))
            first += length // self.width
        self.slots = slots
        self.n_tokens = first
        self.token_shape = (self.rank + 2, self.width + 2)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], width: int) -> "LoraTokenizer":
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        ranks = {v.shape[0] if ".lora_A." in k else v.shape[1] for k, v in state.items()}
        if len(ranks) != 1:
            raise HarnessError(f"LoRA tensors have mixed ranks {sorted(ranks)}: DnD needs one rank")
        return cls(shapes, ranks.pop(), width)

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {s.key: ((s.length, self.rank) if s.transposed else (self.rank, s.length)) for s in self.slots}

    def tokenize(self, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """(n_tokens, r+2, w+2) tokens of one LoRA state dict.

        Computed in float64: the paper's std code log(0.9σ + 0.1) resolves σ only to ~1e-8 in float32,
        which would cost a chunk with σ ~1e-4 (a young LoRA B) 1e-4 relative error on the way back.
        """
        missing = [s.key for s in self.slots if s.key not in state]
        if missing:
            raise HarnessError(f"LoRA state dict lacks {len(missing)} tensors of the layout, e.g. {missing[0]}")
        r, w = self.rank, self.width
        chunks = []
        for s in self.slots:
            t = state[s.key].detach().to(torch.float64).cpu()
            t = t.T if s.transposed else t
            chunks.append(t.reshape(r, s.count, w).permute(1, 0, 2))  # (count, r, w)
        values = torch.cat(chunks)
        mean = values.mean(dim=(1, 2), keepdim=True)
        std = values.std(dim=(1, 2), keepdim=True, unbiased=False)
        tokens = torch.empty(self.n_tokens, r + 2, w + 2, dtype=torch.float64)
        tokens[:, :r, :w] = (values - mean) / std.clamp_min(_EPS)
        m, s = encode_mean(mean), encode_std(std)
        tokens[:, r, :] = m[:, 0]
        tokens[:, :r, w] = m[:, 0]
        tokens[:, r + 1, :] = s[:, 0]
        tokens[:, :r, w + 1] = s[:, 0]
        return tokens.to(dtype)

    def detokenize(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The exact inverse of `tokenize` (up to float rounding); generated tokens decode the same way."""
        if tuple(tokens.shape) != (self.n_tokens, *self.token_shape):  # one LoRA at a time
            raise HarnessError(f"tokens of shape {tuple(tokens.shape)} do not match the layout "
                               f"({self.n_tokens}, {self.token_shape[0]}, {self.token_shape[1]})")
        tokens = tokens.detach().to(torch.float64).cpu()
        r, w = self.rank, self.width
        mean_cells = torch.cat([tokens[:, r, :], tokens[:, :r, w]], dim=1)
        std_cells = torch.cat([tokens[:, r + 1, :], tokens[:, :r, w + 1]], dim=1)
        mean = decode_mean(mean_cells.mean(dim=1))[:, None, None]
        std = decode_std(std_cells.mean(dim=1))[:, None, None]
        values = tokens[:, :r, :w] * std.clamp_min(_EPS) + mean
        state = {}
        for s in self.slots:
            t = values[s.first: s.first + s.count].permute(1, 0, 2).reshape(r, s.length)
            state[s.key] = (t.T if s.transposed else t).to(torch.float32).contiguous()
        return state

    def describe(self) -> dict:
        return {"n_tokens": self.n_tokens, "token_shape": list(self.token_shape), "rank": self.rank,
                "width": self.width, "n_tensors": len(self.slots)}


def _order(key: str):
    match = _KEY.search(key)
    if not match:
        raise HarnessError(f"not a per-layer LoRA projection weight: {key}")
    layer, module, ab = match.groups()
    if module not in MODULE_ORDER:
        raise HarnessError(f"LoRA on {module} is outside DnD's module set {MODULE_ORDER}")
    return int(layer), MODULE_ORDER.index(module), ab


def lora_shapes(n_layers: int, hidden: int, intermediate: int, kv_dim: int, rank: int,
                prefix: str = "base_model.model.model.layers",
                targets=MODULE_ORDER) -> dict[str, tuple[int, int]]:
    """peft state-dict shapes of a LoRA on the `targets` projections (all by default) of a Llama/Qwen-style
    decoder."""
    dims = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv_dim), "v_proj": (hidden, kv_dim),
            "o_proj": (hidden, hidden), "up_proj": (hidden, intermediate), "gate_proj": (hidden, intermediate),
            "down_proj": (intermediate, hidden)}
    shapes = {}
    for layer in range(n_layers):
        for module, (d_in, d_out) in dims.items():
            if module not in targets:
                continue
            part = "self_attn" if module in MODULE_ORDER[:4] else "mlp"
            shapes[f"{prefix}.{layer}.{part}.{module}.lora_A.weight"] = (rank, d_in)
            shapes[f"{prefix}.{layer}.{part}.{module}.lora_B.weight"] = (d_out, rank)
    return shapes


def shapes_of_model(model, rank: int, target_modules=MODULE_ORDER) -> dict[str, tuple[int, int]]:
    """The LoRA state-dict shapes peft would create for `model` (keys as saved in adapter files): a VLM's language
    model only, as the shared trainer adapts it."""
    from harness.vision import lora_module_names

    modules = dict(model.named_modules())
    shapes = {}
    for name in lora_module_names(model, target_modules):
        key, module = f"base_model.model.{name}", modules[name]
        shapes[f"{key}.lora_A.weight"] = (rank, module.in_features)
        shapes[f"{key}.lora_B.weight"] = (module.out_features, rank)
    return shapes


def default_width(shapes: dict[str, tuple[int, int]]) -> int:
    """The largest width dividing every long side (DnD's 128/256/512 for Qwen2.5 are such divisors)."""
    g = 0
    for key, (rows, cols) in shapes.items():
        g = math.gcd(g, rows if ".lora_B." in key else cols)
    return g
