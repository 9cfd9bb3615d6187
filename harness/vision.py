"""What a vision-language model needs beyond a text LM: where its language model sits, images, chat and examples.

A VLM here is a transformers image-text-to-text model (Qwen2-VL, Qwen2.5-VL, Idefics3/SmolVLM): a vision tower,
a projector, and a decoder-only language model that reads the projected image tokens in place of placeholder
tokens. LoRA adapts the language model's projections only (the vision tower stays frozen, as DnD's multimodal
runs do); evaluation goes through lm-eval's `HFMultimodalLM` (harness/evaluate.py); training examples carry
their images, encoded with the model's own processor (harness/trainer.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError, first_line

IMAGE_PLACEHOLDER = "<image>"  # lm-eval's placeholder for an image in a prompt (DEFAULT_IMAGE_PLACEHOLDER)
PROJECTOR_NAMES = ("connector", "merger", "multi_modal_projector", "mm_projector")  # per image token, not per patch


def is_vision_model(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "vision_config", None) is not None


def language_model_path(model) -> str | None:
    """The qualified module name of a VLM's language model (e.g. `model.language_model`); None for a text LM."""
    if not is_vision_model(model):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    for name, module in base.named_modules():
        if module is decoder:
            return name
    raise HarnessError(f"cannot find the language model inside {type(base).__name__}: this vision-language "
                       "architecture is not supported; use Qwen2-VL, Qwen2.5-VL or Idefics3 (SmolVLM)")


def lora_module_names(model, targets) -> list[str]:
    """Qualified names of the Linear modules a LoRA on `targets` (leaf names such as q_proj) adapts: every
    match in a text LM, only the language model's in a VLM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    scope = language_model_path(base)
    return [name for name, module in base.named_modules()
            if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in targets
            and (scope is None or name.startswith(scope + "."))]


def peft_target_modules(model, targets) -> list[str] | str:
    """peft's `target_modules` for a LoRA on `targets`: the leaf names for a text LM; for a VLM, a pattern that
    peft full-matches against module names, confined to the language model (a vision tower has its own q_proj)."""
    scope = language_model_path(model)
    if scope is None:
        return list(targets)
    return rf"{re.escape(scope)}\..*\.(?:{'|'.join(re.escape(t) for t in targets)})"


def load_image(path, where: str):
    """The RGB image in the file `path` (the multimodal loaders give every item one); one-line errors."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise HarnessError(f"{where} has no image: fix the data file (every item needs one)")
    path = Path(str(path))
    if not path.is_file():
        raise HarnessError(f"{where}: image file {path} does not exist: copy the dataset's images/ folder beside "
                           "its .jsonl (or load it from the Hub)")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise HarnessError(f"{where}: image file {path} is not a readable image ({first_line(exc)}): re-copy it") \
            from None


class VisionChat:
    """A processor's chat template, called like a tokenizer's: string contents with `<image>` placeholders become
    interleaved image and text parts, as lm-eval's HFMultimodalLM renders them, so training and evaluation see the
    same prompt."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self.chat_template = getattr(processor, "chat_template", None)
        self.eos_token = processor.tokenizer.eos_token

    def apply_chat_template(self, messages: list[dict], **kwargs) -> str:
        kwargs.pop("tokenize", None)
        return self.processor.apply_chat_template([_parts(m) for m in messages], tokenize=False, **kwargs)


def _parts(message: dict) -> dict:
    content = message["content"]
    if not isinstance(content, str):
        return message
    parts: list[dict] = []
    pieces = content.split(IMAGE_PLACEHOLDER)
    for i, piece in enumerate(pieces):
        if piece:
            parts.append({"type": "text", "text": piece})
        if i < len(pieces) - 1:
            parts.append({"type": "image"})
    return {**message, "content": parts}


@dataclass(frozen=True)
class ImageExample:
    """A training example whose prompt shows images: the trainer encodes it with `processor` (which expands each
    image placeholder into the model's image tokens) and feeds the pixels to the model."""

    prompt: str
    completion: str
    images: tuple
    processor: object

    def __str__(self) -> str:
        """A stable text of the example (its images by content), for keys that digest training inputs."""
        import hashlib

        pixels = [hashlib.sha256(img.tobytes()).hexdigest()[:16] + f"{img.size}" for img in self.images]
        return f"ImageExample({self.prompt!r}, {self.completion!r}, images={pixels})"


def encode_image_example(example: ImageExample, max_length: int, patch: int) -> tuple[list[int], int, list[int]]:
    """Token ids of prompt (image tokens expanded) + completion, where the completion starts, and the vision-tower
    patches of its images (`patch` x `patch` pixels each), counted once here rather than at every step."""
    processor = example.processor
    encoded = processor(text=[example.prompt], images=[list(example.images)], return_tensors="pt")
    prompt = encoded["input_ids"][0].tolist()
    completion = processor.tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    ids = prompt + list(completion)
    if len(ids) > max_length:
        raise HarnessError(f"a training example with its image tokens is {len(ids)} tokens, over strategy.max_length="
                           f"{max_length}: raise strategy.max_length (image tokens cannot be cut)")
    return ids, len(prompt), image_patches(encoded, patch)


def image_inputs(processor, images: list[list], device, dtype) -> dict:
    """The image processor's tensors for a batch of rows' images (padded and stacked as the model expects)."""
    out = processor.image_processor(images=images, return_tensors="pt")
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in out.items()}


def image_patches(inputs: dict, patch: int) -> list[int]:
    """Vision-tower patches of every real image in a processor output (Qwen2-VL's grid, or Idefics3's pixel tiles
    cut into `patch` x `patch` patches)."""
    grid = inputs.get("image_grid_thw")
    if grid is not None:
        return [int(t * h * w) for t, h, w in grid.tolist()]
    pixels = inputs.get("pixel_values")
    if pixels is None or not patch:
        return []
    tiles = pixels.reshape(-1, *pixels.shape[-3:])
    real = tiles.flatten(1).ne(0).any(dim=1)  # Idefics3 pads a row's image list with all-zero images
    return [(tiles.shape[-2] // patch) * (tiles.shape[-1] // patch)] * int(real.sum())


def image_token_count(input_ids: torch.Tensor, config) -> int:
    token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    return int((input_ids == token).sum()) if token is not None else 0
