"""lm-eval's multimodal HF model (`--model hf-multimodal`, HFMultimodalLM), metered as the text one is.

Every generation's images go through the model's processor (lm-eval's own encoding: the chat template, the
image tokens, the pixels); the meter adds what the text path counts (prompt and generated tokens, image tokens
included, measured FLOPs of the prefill with its vision tower and of the first decoding step) and the analytic
price of the vision tower over the images' patches (ModelShape.vision_forward).
"""
from __future__ import annotations

import contextlib

from harness.costs import PhaseMeter
from harness.flops import ModelShape
from harness.vision import image_patches, image_token_count


def metered_vlm_class():
    from lm_eval.models.hf_vlms import HFMultimodalLM

    from harness.evaluate import _DecodeCounter

    class MeteredHFMultimodalLM(HFMultimodalLM):
        def __init__(self, *args, meter: PhaseMeter, shape: ModelShape, count_flops: bool = True, **kwargs):
            self._meter, self._shape, self._count = meter, shape, count_flops
            self._scorer = "lm_eval"
            super().__init__(*args, **kwargs)

        def _create_tokenizer(self, pretrained, tokenizer, **kwargs) -> None:
            # lm-eval 0.4.13 returns a given processor instead of keeping it: keep it, and its tokenizer
            self.processor, self.tokenizer = tokenizer, tokenizer.tokenizer

        def _model_multimodal_generate(self, inputs, max_length, stop, **generation_kwargs):
            ids = inputs["input_ids"]
            batch, prompt = ids.shape
            config = self.model.config
            patches = image_patches(inputs, self._shape.patch_size)
            with _DecodeCounter(self.model, self._meter, self._shape) if self._count else contextlib.nullcontext():
                out = super()._model_multimodal_generate(inputs, max_length, stop, **generation_kwargs)
            new = out.shape[1] - prompt
            vision = self._shape.vision_forward(patches)
            self._meter.add(flops_analytic=self._shape.generate(batch, prompt, new) + vision,
                            tokens=batch * (prompt + max(new - 1, 0)))
            details = self._meter.cost.details
            for key, value in (("prompt_tokens", batch * prompt), ("generated_tokens", batch * new),
                               ("generate_calls", 1), ("image_tokens", image_token_count(ids, config)),
                               ("images", len(patches)), ("vision_patches", sum(patches)),
                               ("vision_flops_analytic", vision)):
                details[key] = details.get(key, 0) + value
            return out

    return MeteredHFMultimodalLM
