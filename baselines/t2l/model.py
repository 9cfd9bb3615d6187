"""The Text-to-LoRA hypernetwork (Charakorn et al., ICML 2025), its three sizes as the official code builds them.

A descriptor per (task, layer, module type) = concat(task encoder(description embedding), layer embedding,
module-type embedding), each LayerNorm'd; a shared backbone (mixer, two residual MLP blocks, a head MLP) and one
output head per module type:

- **L** emits A and B of a (layer, module) together: r·(in + out) values per call;
- **M** one shared head emits A *or* B (r·max(in, out) values, cut to the side's width), told which by a learned
  A/B embedding added before the second residual block;
- **S** emits one rank row per call (max(in, out) values), told which by the A/B embedding and a rotary signal of
  the rank position (the official default; its branch runs the second residual block twice, kept here).

Head weights start at zero for SFT, with biases from peft's LoRA init (Bias-HyperInit, Beck et al. 2023): L's first
LoRA is exactly peft's (A random, B = 0). M and S follow the official code, which fills their one shared bias
with A's init scaled by 1/√2 (S: 1/√(2r)), so their first B is that scaled A, not zero (`init_from_lora`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

VARIANTS = ("L", "M", "S")


@dataclass(frozen=True)
class LoraShape:
    """The LoRA a hypernetwork emits: `rank`, `n_layers` transformer layers, and per adapted module type its
    (in_features, out_features), in a fixed order."""

    n_layers: int
    rank: int
    modules: tuple[tuple[str, int, int], ...]  # (name, in, out)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m for m, _, _ in self.modules)

    def features(self, module: str) -> tuple[int, int]:
        for name, n_in, n_out in self.modules:
            if name == module:
                return n_in, n_out
        raise KeyError(module)

    @property
    def lora_params(self) -> int:
        return self.n_layers * self.rank * sum(i + o for _, i, o in self.modules)


def _mlp(width: int, hidden: int, out: int, dropout: float, pre_norm: bool, post_dropout: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.LayerNorm(width)] if pre_norm else []
    layers += [nn.Linear(width, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, out), nn.SiLU()]
    if post_dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.mlp = _mlp(width, 4 * width, width, dropout, pre_norm=True, post_dropout=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position signal over the second-to-last axis (positions 0..n-1), as Llama applies it (the official S
    variant uses transformers' LlamaRotaryEmbedding at the backbone's width)."""
    n, dim = x.shape[-2], x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
    angles = torch.arange(n, device=x.device, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([angles, angles], -1).cos().to(x.dtype), torch.cat([angles, angles], -1).sin().to(x.dtype)
    half = dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class HyperModulator(nn.Module):
    """Description embedding(s) → a LoRA of `shape`. `emb_dim`: the description encoder's width."""

    def __init__(self, shape: LoraShape, emb_dim: int, variant: str = "M", latent: int = 128, head_in: int = 512,
                 head_bias: bool = False, dropout: float = 0.05) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}")
        if latent % 4:
            raise ValueError("latent must be a multiple of 4 (task half, layer and module quarters)")
        self.shape, self.variant, self.latent, self.head_in, self.emb_dim = shape, variant, latent, head_in, emb_dim
        r = shape.rank
        self.task_encoder = nn.Sequential(nn.Linear(emb_dim, latent // 2), nn.LayerNorm(latent // 2))
        self.depth = nn.Sequential(nn.Embedding(shape.n_layers, latent // 4), nn.LayerNorm(latent // 4))
        self.module_type = nn.Sequential(nn.Embedding(len(shape.modules), latent // 4), nn.LayerNorm(latent // 4))
        self.mixer = nn.Sequential(nn.Dropout(dropout), nn.Linear(latent, 4 * latent), nn.SiLU(), nn.Dropout(dropout),
                                   nn.Linear(4 * latent, latent), nn.SiLU(), nn.Dropout(dropout))
        self.mlp1, self.mlp2 = _Residual(latent, dropout), _Residual(latent, dropout)
        self.mlp3 = nn.Sequential(nn.LayerNorm(latent), nn.Linear(latent, 4 * latent), nn.SiLU(), nn.Dropout(dropout),
                                  nn.Linear(4 * latent, head_in), nn.SiLU())
        if variant != "L":
            self.out_emb = nn.ParameterDict({f"{m}__{side}": nn.Parameter(torch.randn(latent))
                                             for m in shape.names for side in ("A", "B")})
            self.out_emb_norm = nn.LayerNorm(latent)
        self.heads = nn.ModuleDict({m: nn.Linear(head_in, self._head_out(n_in, n_out), bias=head_bias)
                                    for m, n_in, n_out in shape.modules})
        self.register_buffer("_layers", torch.arange(shape.n_layers), persistent=False)
        self._r = r

    def _head_out(self, n_in: int, n_out: int) -> int:
        r = self.shape.rank
        return {"L": r * (n_in + n_out), "M": r * max(n_in, n_out), "S": max(n_in, n_out)}[self.variant]

    def encode_task(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.task_encoder(embedding)

    def forward(self, embedding: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(T, emb_dim) description embeddings → per module (A [T, n_layers, r, in], B [T, n_layers, out, r])."""
        task = self.encode_task(embedding)  # [T, latent/2]
        n_tasks, n_layers, r = task.shape[0], self.shape.n_layers, self._r
        rows = n_tasks * n_layers
        task_rows = task[:, None].expand(-1, n_layers, -1).reshape(rows, -1)
        depth = self.depth(self._layers)[None].expand(n_tasks, -1, -1).reshape(rows, -1)
        out = {}
        for index, (module, n_in, n_out) in enumerate(self.shape.modules):
            kind = self.module_type(torch.full((1,), index, dtype=torch.long, device=task.device)).expand(rows, -1)
            x = self.mlp1(self.mixer(torch.cat([task_rows, depth, kind], dim=-1)))
            head = self.heads[module]
            if self.variant == "L":
                a, b = head(self.mlp3(self.mlp2(x))).split([r * n_in, r * n_out], dim=-1)
                a, b = a.reshape(rows, r, n_in), b.reshape(rows, r, n_out)
            else:
                sides = []
                for side, width in (("A", n_in), ("B", n_out)):
                    h = self.mlp2(x + self.out_emb_norm(self.out_emb[f"{module}__{side}"]))
                    if self.variant == "M":
                        values = head(self.mlp3(h)).view(rows, r, -1)[..., :width]
                    else:  # one rank row per position; the official branch applies mlp2 again after the rotation
                        h = self.mlp2(rotary(h[:, None].expand(-1, r, -1)))
                        values = head(self.mlp3(h))[..., :width]
                    sides.append(values)
                a, b = sides
            out[module] = (a.reshape(n_tasks, n_layers, r, n_in),
                           b.reshape(n_tasks, n_layers, r, n_out).transpose(-1, -2))
        return out

    @torch.no_grad()
    def init_from_lora(self, init_a: dict[str, torch.Tensor]) -> None:
        """Bias-HyperInit for SFT: zero head weights, biases from peft's initial A (`init_a[module]`: [r, in]) and
        B = 0, laid out as each variant reads its head (see the module docstring). Needs head biases."""
        r = self._r
        for module, n_in, n_out in self.shape.modules:
            head = self.heads[module]
            if head.bias is None:
                raise ValueError("Bias-HyperInit needs head biases (head_bias=True)")
            a = init_a[module].to(head.bias)
            nn.init.zeros_(head.weight)
            head.bias.zero_()
            if self.variant == "L":
                head.bias[: r * n_in] = a.flatten()  # B's part stays 0: peft's init exactly
            elif self.variant == "M":
                head.bias.view(r, -1)[:, :n_in] = a / math.sqrt(2)
            else:
                head.bias[:n_in] = a[0] / math.sqrt(2) / math.sqrt(r)

    def flops(self, n_tasks: int = 1) -> int:
        """Analytic forward FLOPs (2 per multiply-add of every Linear) to generate `n_tasks` full LoRAs."""
        d, h, r = self.latent, self.head_in, self._r
        block = 2 * (d * 4 * d + 4 * d * d)  # mixer, mlp1, mlp2: d → 4d → d
        mlp3 = 2 * (d * 4 * d + 4 * d * h)
        total = 0
        for _, n_in, n_out in self.shape.modules:
            if self.variant == "L":
                per_row = 3 * block + mlp3 + 2 * h * r * (n_in + n_out)
            elif self.variant == "M":
                per_row = 2 * block + 2 * (block + mlp3 + 2 * h * r * max(n_in, n_out))
            else:
                per_row = 2 * block + 2 * (block + r * (block + mlp3 + 2 * h * max(n_in, n_out)))
            total += per_row * self.shape.n_layers
        return n_tasks * (total + 2 * self.emb_dim * (self.latent // 2))
