"""DnD's generator: a frozen sentence encoder for the condition, a hyper-convolutional decoder for the weights."""
from __future__ import annotations

import torch
from torch import nn

from baselines.dnd.config import GeneratorPreset
from baselines.dnd.layer import HyperConvLayer


class HyperConvDecoder(nn.Module):
    """(B, N prompts, L tokens, D) condition → (B, n_tokens, r+2, w+2) parameter tokens."""

    def __init__(self, preset: GeneratorPreset) -> None:
        super().__init__()
        self.preset = preset
        feats = [tuple(f) for f in preset.features]
        kernels = preset.kernels()
        self.layers = nn.ModuleList(HyperConvLayer(a, b, k) for a, b, k in zip(feats[:-1], feats[1:], kernels))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        x = condition
        for layer in self.layers:
            x = layer(x)
        return x

    def flops(self) -> int:
        """Analytic forward FLOPs per generated LoRA."""
        return sum(layer.flops() for layer in self.layers)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ConditionProjection(nn.Module):
    """Long prompts (math, code): Linear(L→P), SiLU, Linear(P→P) along the token axis (the camera-ready fix)."""

    def __init__(self, prompt_tokens: int, project_to: int) -> None:
        super().__init__()
        self.down, self.gate = nn.Linear(prompt_tokens, project_to), nn.Linear(project_to, project_to)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:  # (B, N, L, D) → (B, N, P, D)
        x = condition.transpose(-1, -2)
        return self.gate(nn.functional.silu(self.down(x))).transpose(-1, -2)


class Generator(nn.Module):
    """The trainable part of DnD: optional condition projection, then the decoder, plus (presets with
    `mean_base`, not the paper's) a learned token tensor that starts at the library's mean tokens, so the decoder
    learns each task's departure from the library rather than the tokens themselves."""

    def __init__(self, preset: GeneratorPreset) -> None:
        super().__init__()
        self.preset = preset
        self.projection = ConditionProjection(preset.prompt_tokens, preset.project_to) if preset.project_to else None
        self.decoder = HyperConvDecoder(preset)
        self.base = nn.Parameter(torch.zeros(preset.n_tokens, *preset.token_shape)) if preset.mean_base else None

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            condition = self.projection(condition)
        out = self.decoder(condition)
        return out + self.base if self.base is not None else out

    def flops(self) -> int:
        p = self.preset
        proj = 0
        if p.project_to:
            proj = 2 * p.n_prompts * p.encoder_dim * (p.prompt_tokens * p.project_to + p.project_to ** 2)
        return proj + self.decoder.flops()  # matmuls and convolutions; additions (biases, `base`) are not counted
