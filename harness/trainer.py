"""The shared, budget-aware LoRA trainer (peft). Every tuning strategy trains through it.

Examples are (prompt, completion) pairs; the loss covers the completion tokens only, tokenized
exactly as lm-eval scores a continuation, so training and evaluation see the same tokens.
The learning rate follows a cosine over the *fraction of the budget spent*, which works for every
budget kind (FLOPs, seconds, examples, steps) without knowing the step count in advance, or stays flat
after the warm-up (`schedule: constant`: DnD's library trajectories, whose saved steps must keep moving).
Batches are length-grouped (`_Batches`) so compute goes to real tokens, not padding; FLOPs are counted live
only until the step's count is known exactly as a·(rows·W) + b·(rows·W²) of the batch width W (FlopTally's
`count_linear`, harness/flops.py), never by a second pass.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from harness.budget import TrainingBudget
from harness.costs import PhaseMeter, synchronize
from harness.errors import BudgetTooSmall, HarnessError
from harness.flops import ModelShape
from harness.vision import ImageExample, encode_image_example, image_inputs, image_token_count, lora_module_names, \
    peft_target_modules

DEFAULT_TARGETS = (  # every attention and MLP projection: lora.yaml's target_modules, DnD's library LoRAs
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """How one LoRA is trained. No defaults: the values are the strategy's YAML (configs/strategy/lora.yaml,
    dnd.yaml's `collect`), built with `harness.strategy_settings.settings_from`."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    lr: float
    warmup_frac: float
    schedule: str  # "cosine" (to 0 over the budget spent) or "constant" (flat after the warm-up)
    weight_decay: float
    batch_size: int
    max_length: int
    max_steps: int | None  # the strategy's own cap, on top of the budget
    checkpoint_every: int | None  # save a trajectory of adapters every N steps
    checkpoint_start: int  # first step eligible for a trajectory checkpoint


@dataclass
class TrainResult:
    adapter_dir: str
    steps: int
    sequences_processed: int
    tokens: int  # real (non-padding) tokens trained on
    trajectory: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


class _CausalEncoder:
    """Just what lm-eval's `TemplateLM._encode_pair` needs, tokenizing as its HF model does (no BOS)."""

    backend = "causal"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def tok_encode(self, text: str, **_) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of a (context, continuation) pair, split by lm-eval's own rule, without BOS as its HF model."""
    from lm_eval.api.model import TemplateLM

    return TemplateLM._encode_pair(_CausalEncoder(tokenizer), prompt, completion)


def encode_example(tokenizer, prompt: str, completion: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt+completion and where the completion starts, split by lm-eval's own rule."""
    ctx, cont = encode_pair(tokenizer, prompt, completion)
    whole, start = ctx + cont, len(ctx)
    if len(whole) > max_length:  # keep the completion, drop the oldest context tokens
        cut = len(whole) - max_length
        whole, start = whole[cut:], max(0, start - cut)
    return whole, start


def encode_any(tokenizer, example, max_length: int, patch: int = 0) -> tuple[list[int], int, tuple, list[int]]:
    """(ids, completion start, images, their vision-tower patches) of a (prompt, completion) pair or of an
    ImageExample (its image tokens expanded by the model's processor, `patch` the tower's patch side)."""
    if isinstance(example, ImageExample):
        ids, start, patches = encode_image_example(example, max_length, patch)
        return ids, start, example.images, patches
    return (*encode_example(tokenizer, example[0], example[1], max_length), (), [])


def _patches(batch: list[tuple]) -> list[int]:
    return [n for item in batch for n in item[3]]


def _collate(batch: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, mask and labels of encoded examples ((ids, start) or (ids, start, images))."""
    width = max(len(item[0]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (ids, start, *_) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, start: len(ids)] = torch.tensor(ids[start:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


GROUP_WINDOW = 32  # batches per length-sorted window: wide enough to pad little, narrow enough to stay random


class _Batches:
    """Seeded passes over the examples, reshuffled each epoch, as many as the budget allows.

    Batches are length-grouped so they pad little: each epoch's shuffled order is cut into windows of
    GROUP_WINDOW batches, each window is sorted by length and cut into batches, and the full batches are
    shuffled (the last, short one stays last, so a batch that spans two epochs is still one batch).
    """

    def __init__(self, encoded: list, batch_size: int, seed: int) -> None:
        self.encoded, self.size, self.rng, self.order = encoded, min(batch_size, len(encoded)), random.Random(seed), []

    def _epoch(self) -> list[int]:
        order = list(range(len(self.encoded)))
        self.rng.shuffle(order)
        window, batches = self.size * GROUP_WINDOW, []
        for at in range(0, len(order), window):
            ranked = sorted(order[at: at + window], key=lambda i: len(self.encoded[i][0]))
            batches += [ranked[j: j + self.size] for j in range(0, len(ranked), self.size)]
        tail = [batches.pop()] if len(batches[-1]) < self.size else []
        self.rng.shuffle(batches)
        return [i for batch in batches + tail for i in batch]

    def next(self) -> list[tuple[list[int], int]]:
        batch = []
        while len(batch) < self.size:
            if not self.order:
                self.order = self._epoch()[::-1]  # popped from the end
            batch.append(self.encoded[self.order.pop()])
        return batch


def _on_trajectory(step: int, settings: LoraSettings) -> bool:
    every, start = settings.checkpoint_every, settings.checkpoint_start
    return bool(every) and step >= start and (step - start) % every == 0


def _progress(budget: TrainingBudget, settings: LoraSettings, elapsed: float, steps: int) -> float:
    """How far training is: the budget's fraction spent, or the strategy's step cap's, whichever is further."""
    frac = budget.progress(elapsed, steps)
    return max(frac, steps / settings.max_steps) if settings.max_steps else frac


SCHEDULES = ("cosine", "constant")


def _lr_factor(progress: float, warmup: float, schedule: str = "cosine") -> float:
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.01)
    if schedule == "constant":
        return 1.0
    span = (progress - warmup) / max(1e-9, 1 - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, span)))


def lora_param_count(model, settings: LoraSettings) -> int:
    """Parameters of A and B over every targeted Linear (a VLM's language model only): r·(in + out) each."""
    modules = dict(model.named_modules())
    return sum(settings.rank * (modules[n].in_features + modules[n].out_features)
               for n in lora_module_names(model, settings.target_modules))


def _images_of(examples: list) -> object:
    """The processor of the examples that show images (None for text examples)."""
    return next((e.processor for e in examples if isinstance(e, ImageExample)), None)


def _pixels(processor, batch: list[tuple], device, dtype) -> dict:
    images = [list(item[2]) for item in batch]
    if processor is None or not any(images):
        return {}
    return image_inputs(processor, images, device, dtype)


def predict_train_flops(model, tokenizer, examples: list[tuple[str, str]], settings: LoraSettings, steps: int,
                        seed: int = 0) -> float:
    """Analytic FLOPs of `steps` steps of `train_lora` on `examples` (the very batches it would draw), without
    running the model: what a budget check needs before deciding to train."""
    shape = replace(ModelShape.of(model), lora_params=lora_param_count(model, settings))
    encoded = [encode_any(tokenizer, e, settings.max_length, shape.patch_size) for e in examples]
    if not encoded:
        return 0.0
    batches = _Batches(encoded, settings.batch_size, seed)
    total = 0.0
    for _ in range(steps):
        batch = batches.next()  # with images: the frozen vision tower's forward over them
        total += shape.lora_train_step(len(batch), max(len(item[0]) for item in batch))
        total += shape.vision_forward(_patches(batch))
    return total


def train_lora(model, tokenizer, examples: list[tuple[str, str]], budget: TrainingBudget, settings: LoraSettings,
               out_dir: Path, meter: PhaseMeter, seed: int = 0, progress: bool = True,
               init_seed: int | None = None) -> TrainResult:
    """Train a fresh LoRA on `examples` until the budget (or `max_steps`) is spent; save it to out_dir/adapter.
    `seed` draws the batches and, unless `init_seed` is given, the LoRA's initial A."""
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    if not examples:
        raise HarnessError("no training examples: the task's adaptation pool is empty")
    if budget.budget.kind == "examples" and settings.max_steps is None:  # labels are not a stopping rule
        raise HarnessError(f"budget {budget.budget.name} counts labeled examples, not steps: set strategy.epochs "
                           f"or strategy.max_steps")
    set_up = time.perf_counter()
    device = next(model.parameters()).device
    encoded = [encode_any(tokenizer, e, settings.max_length, ModelShape.of(model).patch_size) for e in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    processor = _images_of(examples)
    dtype = next(model.parameters()).dtype

    torch.manual_seed(seed if init_seed is None else init_seed)
    # a VLM's LoRA adapts its language model only; the vision tower and projector stay frozen (harness/vision.py)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=peft_target_modules(model, settings.target_modules), task_type="CAUSAL_LM",
                        bias="none")
    peft_model = get_peft_model(model, config)
    peft_model.train()
    shape = ModelShape.of(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)

    batches = _Batches(encoded, settings.batch_size, seed)

    try:
        out_dir = Path(out_dir)
        result = TrainResult(adapter_dir=str(out_dir / "adapter"), steps=0, sequences_processed=0, tokens=0)
        batch = batches.next()
        first = _collate(batch, pad_id)
        budget.check_first_step(shape.lora_train_step(*first["input_ids"].shape)
                                + shape.vision_forward(_patches(batch)))

        bar = tqdm(total=100, desc="train", unit="%", disable=not progress, leave=False, mininterval=1.0,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total} % [{elapsed}<{remaining}{postfix}]")
        start = time.perf_counter()
        set_up = start - set_up
        saving = 0.0  # seconds spent writing trajectory checkpoints: not training, so off the budget's clock
        reason, bound = "", False
        while True:
            tensors = _collate(batch, pad_id)
            pixels = _pixels(processor, batch, device, dtype)
            patches = _patches(batch)
            step_analytic = shape.lora_train_step(*tensors["input_ids"].shape) + shape.vision_forward(patches)
            synchronize(device)
            elapsed = time.perf_counter() - start - saving
            if settings.max_steps is not None and result.steps >= settings.max_steps:
                reason, bound = f"reached strategy.max_steps={settings.max_steps}", False
                break
            if not budget.fits(step_analytic, elapsed, result.steps):
                reason, bound = "budget spent", True
                break
            frac = _progress(budget, settings, elapsed, result.steps)
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * _lr_factor(frac, settings.warmup_frac, settings.schedule)
            tensors = {**{k: v.to(device) for k, v in tensors.items()}, **pixels}
            before = meter.tally.total
            padded = bool((tensors["attention_mask"] == 0).any())  # the masked attention path is its own kind
            rows, width = tensors["input_ids"].shape
            # Matmuls count rows·W, attention rows·W²: once a few live counts fix the two coefficients exactly,
            # the counter's total is derived, so length-grouped widths (rarely repeated) skip its per-op dispatch.
            # Images: the frozen vision tower's forward is fixed by the images' patch counts (part of the kind), a
            # constant term of the fit.
            features = (rows * width, rows * width * width) + ((1,) if patches else ())
            with meter.tally.count_linear(("lora_step", padded, tuple(sorted(patches))), features):
                loss = peft_model(**tensors).loss
                loss.backward()
            step_measured = meter.tally.total - before
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            n_tokens = int(tensors["attention_mask"].sum())
            meter.add(flops_analytic=step_analytic, tokens=tensors["input_ids"].numel())
            if patches:  # images in the batch: their share of the tokens, the frozen tower's work
                seen = meter.cost.details
                for key, value in (("images", len(patches)), ("vision_patches", sum(patches)),
                                   ("image_tokens", image_token_count(tensors["input_ids"], model.config)),
                                   ("vision_flops_analytic", shape.vision_forward(patches))):
                    seen[key] = seen.get(key, 0) + value
            result.steps += 1
            result.sequences_processed += len(batch)
            result.tokens += n_tokens
            result.losses.append(float(loss.detach()))
            synchronize(device)
            elapsed = time.perf_counter() - start - saving
            if result.steps == 1 and budget.budget.kind == "seconds" and elapsed > budget.budget.amount:
                raise BudgetTooSmall(
                    f"budget {budget.budget.name} ({budget.budget.amount:g} s) is shorter than one training step "
                    f"({elapsed:.2f} s): raise budget.amount or lower strategy.batch_size")
            budget.charge(step_measured, step_analytic, elapsed, result.steps)
            if _on_trajectory(result.steps, settings):
                path = out_dir / "trajectory" / f"step_{result.steps:06d}"
                saved_at = time.perf_counter()
                peft_model.save_pretrained(path)
                saving += time.perf_counter() - saved_at
                result.trajectory.append(str(path))
            bar.n = round(100 * _progress(budget, settings, elapsed, result.steps), 1)
            bar.set_postfix(step=result.steps, loss=f"{result.losses[-1]:.3f}", refresh=False)
            bar.update(0)  # redraws at most every `mininterval` seconds
            batch = batches.next()
        bar.close()
        synchronize(device)
        loop = time.perf_counter() - start - saving
        if result.steps == 0:
            raise HarnessError("the budget ran out before the first training step finished: raise budget.amount")
        budget.stop(reason, bound)
        saved_at = time.perf_counter()
        peft_model.save_pretrained(result.adapter_dir)
        (out_dir / "train_log.json").write_text(json.dumps({**asdict(result), "settings": asdict(settings)}, indent=1))
        saving += time.perf_counter() - saved_at
        # The phase's wall-clock is the training loop; tokenizing, adding the adapter and saving are their own figures.
        meter.cost.wall_s -= set_up + saving  # PhaseMeter adds the whole span on exit
        meter.cost.details.update(train_loop_s=round(loop, 4), adapter_setup_s=round(set_up, 4),
                                  adapter_save_s=round(saving, 4))
    finally:
        peft_model.unload()  # the caller gets its base model back, without LoRA layers, even on error
        model.eval()
    return result
