"""FLOP counting: measured (torch's FlopCounterMode) and analytic (parameter and token counts).

Conventions, shared by both so that they can be compared:
- 1 multiply-accumulate = 2 FLOPs; only matrix products and attention are counted.
- Attention is counted without a causal discount (as torch's counter does): 4·T_q·T_k·d per head
  forward, 2.5× that backward.
- Shapes are the tensors actually processed, padding included: that is the work the hardware did.
- LoRA training on a frozen base ≈ 4·N·D + 6·N_lora·D (+ attention): the frozen weights need
  activation gradients but no weight gradients.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _attention_flops(b: int, h: int, s_q: int, s_k: int, d_qk: int, d_v: int) -> int:
    return 2 * b * h * s_q * s_k * d_qk + 2 * b * h * s_q * s_k * d_v


def _cpu_flash_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, s_q, d_qk = query_shape
    return _attention_flops(b, h, s_q, key_shape[-2], d_qk, value_shape[-1])


def _cpu_flash_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, s_q, d_qk = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    # recompute scores, then dV, dP, dQ, dK: five products of the forward's size class
    return 3 * 2 * b * h * s_q * s_k * d_qk + 2 * 2 * b * h * s_q * s_k * d_v


# torch 2.13's registry misses the CPU flash-attention kernels that SDPA dispatches to on CPU.
_EXTRA_FORMULAS = {}
if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_fwd
    _EXTRA_FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_bwd


def flop_counter() -> FlopCounterMode:
    from torch.utils.flop_counter import flop_registry

    extra = {op: fn for op, fn in _EXTRA_FORMULAS.items() if op not in flop_registry}
    return FlopCounterMode(display=False, depth=1, custom_mapping=extra)


class FlopTally:
    """Accumulates measured FLOPs over many counted regions."""

    def __init__(self) -> None:
        self.total = 0

    @contextlib.contextmanager
    def count(self):
        counter = flop_counter()
        with counter:
            yield
        self.total += counter.get_total_flops()


@dataclass(frozen=True)
class ModelShape:
    """What the analytic FLOP formulas need to know about a decoder."""

    matmul_params: int  # weights of every Linear applied to each token, lm_head included
    n_layers: int
    n_heads: int
    head_dim: int
    lora_params: int = 0  # A and B of every adapted module

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ModelShape":
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        lora = 0
        matmul = 0
        for name, module in base.named_modules():
            if isinstance(module, torch.nn.Linear):
                if ".lora_" in name or name.startswith("lora_"):
                    lora += module.weight.numel()
                else:
                    matmul += module.weight.numel()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(matmul, cfg.num_hidden_layers, cfg.num_attention_heads, head_dim, lora)

    def attention_forward(self, batch: int, seq: int, ctx: int | None = None) -> int:
        ctx = seq if ctx is None else ctx
        return self.n_layers * _attention_flops(batch, self.n_heads, seq, ctx, self.head_dim, self.head_dim)

    def forward(self, batch: int, seq: int) -> int:
        """One forward pass over a [batch, seq] tensor (LoRA modules, if any, unmerged)."""
        tokens = batch * seq
        return 2 * (self.matmul_params + self.lora_params) * tokens + self.attention_forward(batch, seq)

    def lora_train_step(self, batch: int, seq: int) -> int:
        """Forward + backward with a frozen base and trainable LoRA modules."""
        tokens = batch * seq
        return (4 * self.matmul_params * tokens + 6 * self.lora_params * tokens
                + int(3.5 * self.attention_forward(batch, seq)))
