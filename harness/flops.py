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
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _attention_flops(b: int, h: int, s_q: int, s_k: int, d_qk: int, d_v: int) -> int:
    return 2 * b * h * s_q * s_k * d_qk + 2 * b * h * s_q * s_k * d_v


def _cpu_flash_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch 2.13's registry misses the CPU flash-attention kernels that SDPA dispatches to on CPU; they
# get torch's own SDPA formulas.
_EXTRA_FORMULAS = {}
if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_fwd
    _EXTRA_FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_bwd

# Metadata queries torch's counting mode leaves to the default dispatch.
_SIZE_QUERIES = frozenset({
    aten.sym_is_contiguous.default, aten.is_contiguous.default, aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default, aten.is_non_overlapping_and_dense.default, aten.size.default,
    aten.sym_size.default, aten.stride.default, aten.sym_stride.default, aten.storage_offset.default,
    aten.sym_storage_offset.default, aten.numel.default, aten.sym_numel.default, aten.dim.default,
    torch.ops.prim.layout.default})


class _CountingMode(_FlopCounterMode):
    """torch's counting dispatch mode, minus a repeated cost: for an op with no FLOP formula, torch
    tries `func.decompose()` on every call; whether an op decomposes is a static property of the op,
    so the ops that do not are remembered and run directly. Counts are unchanged."""

    _leaves: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs if kwargs else {}
        if func in _SIZE_QUERIES:
            return NotImplemented
        if isinstance(func, torch._ops.HigherOrderOperator):
            return self._handle_higher_order_ops(func, types, args, kwargs)
        registry = self.counter.flop_registry
        if func not in registry and func not in self._leaves and func is not torch.ops.prim.device.default:
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            self._leaves.add(func)
        out = func(*args, **kwargs)
        return self.counter._count_flops(func._overloadpacket, out, args, kwargs)


class TotalFlopCounter(FlopCounterMode):
    """torch's FlopCounterMode (same interception, same formulas), counting totals only.

    Per-module attribution (a ModuleTracker hooking every module call) and the per-call decomposition
    probe above cost ~10 % of a CPU forward pass; the total is all the harness reads.
    """

    def __init__(self, custom_mapping: dict | None = None) -> None:
        super().__init__(display=False, depth=1, custom_mapping=custom_mapping)

    def __enter__(self):
        self.flop_counts.clear()
        self.mod_tracker.parents = {"Global"}
        self.mode = _CountingMode(self)
        self.mode.__enter__()
        return self

    def __exit__(self, *args):
        out = self.mode.__exit__(*args)
        self.mode = None
        return out


def flop_counter() -> FlopCounterMode:
    from torch.utils.flop_counter import flop_registry

    extra = {op: fn for op, fn in _EXTRA_FORMULAS.items() if op not in flop_registry}
    return TotalFlopCounter(custom_mapping=extra)


class LinearCounts:
    """Counter totals that are exact linear functions of a pass's shape features, learned from live counts.

    A forward pass of a given kind (same model, same code path) counts matmuls linear in rows x new tokens,
    attention linear in rows x new x keys, and the output head linear in rows x logit positions: its
    FlopCounterMode total is c . features exactly. Once len(features) live counts at independent shapes
    determine c, and every further live count up to `CONFIRM` points matches it exactly, later passes of
    that kind are derived from c instead of counted; a single mismatch keeps the kind counted live forever.
    """

    CONFIRM = 2  # live counts beyond the ones that determine c, all of which must match exactly

    def __init__(self) -> None:
        self.points: dict = {}  # kind -> [(features, counted FLOPs)]
        self.coef: dict = {}  # kind -> exact rational coefficients, once confirmed
        self.unfit: set = set()

    def derive(self, kind, features: tuple[int, ...]) -> int | None:
        coef = self.coef.get(kind)
        if coef is None:
            return None
        value = sum(c * f for c, f in zip(coef, features, strict=True))
        return int(value) if value.denominator == 1 else None

    def learn(self, kind, features: tuple[int, ...], flops: int) -> None:
        if kind in self.coef or kind in self.unfit:
            return
        points = self.points.setdefault(kind, [])
        points.append((tuple(features), int(flops)))
        if len(points) < len(features) + self.CONFIRM:
            return
        coef = _solve_exact(points, len(features))
        if coef is None:  # no independent set yet (shapes too alike): keep counting
            if len(points) > 4 * len(features) + 8:
                self.unfit.add(kind)
            return
        if all(sum(c * f for c, f in zip(coef, x)) == y for x, y in points):
            self.coef[kind] = coef
        else:
            self.unfit.add(kind)


def _solve_exact(points: list, n: int):
    """Coefficients c with c . x = y on the first n linearly independent points, in exact rationals."""
    from fractions import Fraction
    from itertools import combinations

    for chosen in combinations(points[:12], n):
        rows = [[Fraction(v) for v in x] + [Fraction(y)] for x, y in chosen]
        for col in range(n):  # Gauss-Jordan elimination
            pivot = next((r for r in range(col, n) if rows[r][col] != 0), None)
            if pivot is None:
                break
            rows[col], rows[pivot] = rows[pivot], rows[col]
            rows[col] = [v / rows[col][col] for v in rows[col]]
            for r in range(n):
                if r != col and rows[r][col] != 0:
                    rows[r] = [a - rows[r][col] * b for a, b in zip(rows[r], rows[col])]
        else:
            return [rows[i][n] for i in range(n)]
    return None


class FlopTally:
    """Accumulates measured FLOPs over many counted regions.

    A region given a `shape_key` is counted live only the first time that key is seen; later regions
    with the same key (same model, same tensor shapes, same code path) reuse that count, since a
    count is a function of the shapes alone. This keeps the counter's dispatch overhead off most steps.
    """

    def __init__(self) -> None:
        self.total = 0
        self.counted = 0  # regions counted live
        self.reused = 0  # regions whose count came from an identical, earlier region
        self.derived = 0  # regions whose count came from an exact linear fit of earlier live counts
        self.linear = LinearCounts()
        self._by_key: dict = {}

    @contextlib.contextmanager
    def count_linear(self, kind, features: tuple[int, ...]):
        """Count the region live until `kind`'s counts are known as an exact linear function of `features`
        (LinearCounts), then add the derived count without FlopCounterMode's per-op dispatch."""
        derived = self.linear.derive(kind, features)
        if derived is not None:
            self.derived += 1
            self.total += derived
            yield
            return
        before = self.total
        with self.count():
            yield
        self.linear.learn(kind, features, self.total - before)

    @contextlib.contextmanager
    def count(self, shape_key=None):
        if shape_key is not None and shape_key in self._by_key:
            self.reused += 1
            self.total += self._by_key[shape_key]
            yield
            return
        counter = flop_counter()
        with counter:
            yield
        flops = counter.get_total_flops()
        self.counted += 1
        self.total += flops
        if shape_key is not None:
            self._by_key[shape_key] = flops


@dataclass(frozen=True)
class ModelShape:
    """What the analytic FLOP formulas need to know about a decoder (and, for a vision-language model, its vision
    tower: the language model's figures are then the decoder's alone)."""

    matmul_params: int  # weights of every Linear applied to each token, lm_head included
    n_layers: int
    n_heads: int
    head_dim: int
    lora_params: int = 0  # A and B of every adapted module
    head_params: int = 0  # the output projection (part of matmul_params); generation applies it to one position
    vision_params: int = 0  # weights of the vision tower's Linear and patch-embedding convolutions, per patch
    projector_params: int = 0  # the projector's weights, applied once per image token (every `merge` patches)
    merge: int = 1  # patches per image token (Idefics3: scale_factor², Qwen2-VL: spatial_merge_size²)
    vision_layers: int = 0
    vision_heads: int = 0
    vision_head_dim: int = 0
    patch_size: int = 0  # the vision tower's patch side in pixels

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ModelShape":
        from harness.vision import PROJECTOR_NAMES, language_model_path

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        scope = language_model_path(base)
        out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        lora = matmul = vision = projector = 0
        for name, module in base.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
                continue
            if ".lora_" in name or name.startswith("lora_"):
                lora += module.weight.numel()
            elif scope is None or name.startswith(scope + ".") or module is out:
                matmul += module.weight.numel() if isinstance(module, torch.nn.Linear) else 0
            elif any(part in PROJECTOR_NAMES for part in name.split(".")):
                projector += module.weight.numel()
            else:
                vision += module.weight.numel()
        text = cfg.get_text_config() if scope is not None else cfg
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        head = out.weight.numel() if isinstance(out, torch.nn.Linear) else 0
        extra = {}
        if scope is not None:
            v = cfg.vision_config
            heads = getattr(v, "num_attention_heads", None) or getattr(v, "num_heads")
            width = getattr(v, "hidden_size", None) or getattr(v, "embed_dim")
            merge = int(getattr(cfg, "scale_factor", 0) or getattr(v, "spatial_merge_size", 1)) ** 2
            extra = dict(vision_params=vision, projector_params=projector, merge=merge,
                         vision_layers=getattr(v, "num_hidden_layers", None) or getattr(v, "depth"),
                         vision_heads=heads, vision_head_dim=width // heads, patch_size=int(v.patch_size))
        return cls(matmul, text.num_hidden_layers, text.num_attention_heads, head_dim, lora, head, **extra)

    def vision_forward(self, patches: list[int]) -> int:
        """The vision tower and projector over images of `patches` patches each: every patch through the tower's
        weights, full attention among an image's patches (Qwen2.5-VL's windowed layers attend less: an upper
        bound there), and the projector once per image token."""
        total = 0
        for n in patches:
            total += 2 * self.vision_params * n + 2 * self.projector_params * (n // self.merge)
            total += self.vision_layers * _attention_flops(1, self.vision_heads, n, n, self.vision_head_dim,
                                                           self.vision_head_dim)
        return total

    def attention_forward(self, batch: int, seq: int, ctx: int | None = None) -> int:
        ctx = seq if ctx is None else ctx
        return self.n_layers * _attention_flops(batch, self.n_heads, seq, ctx, self.head_dim, self.head_dim)

    def forward(self, batch: int, seq: int) -> int:
        """One forward pass over a [batch, seq] tensor (LoRA modules, if any, unmerged)."""
        tokens = batch * seq
        return 2 * (self.matmul_params + self.lora_params) * tokens + self.attention_forward(batch, seq)

    def forward_cached(self, batch: int, new: int, cached: int, logits: int | None = None) -> int:
        """A forward of `new` tokens per row over a KV cache of `cached` positions (keys: cached + new),
        with the output projection applied to `logits` positions per row (default: all `new`)."""
        logits = new if logits is None else logits
        return (2 * (self.matmul_params + self.lora_params) * batch * new
                - 2 * self.head_params * batch * (new - logits) + self.attention_forward(batch, new, cached + new))

    def generate(self, batch: int, prompt: int, new: float) -> float:
        """Prefill of a [batch, prompt] tensor, then new-1 one-token steps against a growing KV cache.

        The prefill computes logits for its last position only (transformers' logits_to_keep). Step i
        (1 ≤ i < new) attends over prompt + i positions; the sum is taken in closed form, so `new` may
        be a mean over queries (the expected output length of a pricing).
        """
        total = self.forward(batch, prompt) - 2 * self.head_params * batch * max(prompt - 1, 0)
        steps = max(new, 1) - 1
        per_token = 2 * (self.matmul_params + self.lora_params) * batch
        attended = steps * prompt + steps * (steps + 1) / 2  # Σ_{i=1}^{steps} (prompt + i)
        per_position = self.attention_forward(batch, 1, 1)  # attention of one query token per cached position
        return total + steps * per_token + per_position * attended

    def lora_train_step(self, batch: int, seq: int) -> int:
        """Forward + backward with a frozen base and trainable LoRA modules."""
        tokens = batch * seq
        return (4 * self.matmul_params * tokens + 6 * self.lora_params * tokens
                + int(3.5 * self.attention_forward(batch, seq)))
