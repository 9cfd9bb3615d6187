"""Tasks as the harness sees them: an lm-eval task plus its adaptation pool and description."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from functools import lru_cache

from harness.errors import HarnessError
from harness.pools import PoolInfo, pool_info_for
from harness.settings import TASKS_DIR
from harness.vision import IMAGE_PLACEHOLDER, ImageExample


def _without_images(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "")


def quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


@lru_cache(maxsize=1)
def task_manager():
    from lm_eval.tasks import TaskManager

    quiet_lm_eval()
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, verbosity="ERROR")


def load_lm_eval_task(lm_eval_name: str, overrides: dict | None = None):
    """The task as its YAML declares it, with `overrides` merged over the YAML's fields.

    `dataset_kwargs` is merged key by key (a task option such as LiveCodeBench's release window
    changes one key and keeps the rest). lm-eval's public loader drops a YAML's `!function` hooks when
    it is given an override dict, hence its factory is used directly.
    """
    from lm_eval.tasks import get_task_dict

    manager = task_manager()
    if lm_eval_name not in manager.all_tasks:
        raise HarnessError(f"lm-eval task {lm_eval_name!r} is not defined under {TASKS_DIR}: check task.lm_eval_task")
    if not overrides:
        return get_task_dict([lm_eval_name], manager)[lm_eval_name]
    entry = manager._entry(lm_eval_name)
    base = manager._factory._load_full_config(entry, None)
    merged = {"task": lm_eval_name, **overrides}
    if "dataset_kwargs" in overrides:
        merged["dataset_kwargs"] = {**(base.get("dataset_kwargs") or {}), **overrides["dataset_kwargs"]}
    if "generation_kwargs" in overrides:
        merged["generation_kwargs"] = {**(base.get("generation_kwargs") or {}), **overrides["generation_kwargs"]}
    return manager._factory.build(entry, overrides=merged, registry=manager._index)


def dataset_identity(task_cfg) -> tuple[str, str | None]:
    """(dataset path, config name) a task config reads, from its lm-eval YAML and dataset options."""
    manager = task_manager()
    name = str(task_cfg.lm_eval_task)
    if name not in manager.all_tasks:
        raise HarnessError(f"lm-eval task {name!r} is not defined under {TASKS_DIR}: check task.lm_eval_task")
    full = manager._factory._load_full_config(manager._entry(name), None)
    kwargs = {**(full.get("dataset_kwargs") or {}), **dict(task_cfg.get("dataset_options") or {})}
    path = kwargs.get("path") or full.get("dataset_path")
    return str(path), kwargs.get("name") or full.get("dataset_name")


def shows_images(task_cfg) -> bool:
    """Whether a task config's items show images (its lm-eval YAML has `doc_to_image`), known without loading data."""
    manager = task_manager()
    name = str(task_cfg.lm_eval_task)
    if name not in manager.all_tasks:
        raise HarnessError(f"lm-eval task {name!r} is not defined under {TASKS_DIR}: check task.lm_eval_task")
    return manager._factory._load_full_config(manager._entry(name), None).get("doc_to_image") is not None


def task_overrides(cfg) -> dict:
    """lm-eval config fields a Hydra task config changes: dataset options and sampling."""
    out: dict = {}
    options = cfg.get("dataset_options")
    if options:
        out["dataset_kwargs"] = dict(options)
    sampling = cfg.get("sampling")
    if sampling:
        n = int(sampling.get("n", 1))
        if n < 1:
            raise HarnessError(f"task {cfg.name}: sampling.n must be >= 1 (got {n})")
        temperature = float(sampling.get("temperature", 0.0))
        if n > 1 and temperature <= 0:
            raise HarnessError(f"task {cfg.name}: {n} samples per problem need sampling.temperature > 0 "
                               "(greedy decoding would repeat one answer)")
        gen = {"do_sample": temperature > 0, "temperature": temperature}
        for key in ("top_p", "max_gen_toks"):
            if sampling.get(key) is not None:
                gen[key] = sampling[key]
        out["repeats"], out["generation_kwargs"] = n, gen
    return out


@dataclass
class TaskHandle:
    name: str
    lm_eval_name: str
    description: str
    task: object  # lm_eval ConfigurableTask, holding the `pool` and `eval` splits
    pool_info: PoolInfo

    chat_tokenizer: object = None  # set by use_chat: prompts are then rendered with its chat template
    processor: object = None  # a vision-language model's processor (use_processor): encodes prompts with images
    # The benchmark's standard form: field -> the variant's name when the scored rows lack that field.
    standard_fields: dict = field(default_factory=dict)

    @classmethod
    def from_cfg(cls, cfg) -> "TaskHandle":
        task = load_lm_eval_task(cfg.lm_eval_task, task_overrides(cfg))
        # A task with its own loader (LiveCodeBench) says how it split its data through `pool_info`.
        describe = getattr(task.config.custom_dataset, "pool_info", None) or pool_info_for
        info = describe(**dict(task.config.dataset_kwargs or {}))
        return cls(cfg.name, cfg.lm_eval_task, str(cfg.description).strip(), task, info,
                   standard_fields=dict(cfg.get("standard_fields") or {}))

    @property
    def data_variant(self) -> str:
        """How the scored data differs from the benchmark's standard form ("" when it does not)."""
        docs = self.eval_docs
        names = [variant for name, variant in self.standard_fields.items()
                 if any(not str(d.get(name) or "").strip() for d in docs)]
        return ", ".join(names)

    @property
    def split_size(self) -> int:
        """Items of the evaluation split as published: the scored ones plus any pool carved out of it."""
        info = self.pool_info
        return info.n_eval + (len(info.carved_rows) if info.carved else 0)

    @property
    def generative(self) -> bool:
        return self.task.config.output_type == "generate_until"

    @property
    def multimodal(self) -> bool:
        """Whether every item shows images (the YAML's `doc_to_image`): it needs a vision-language model."""
        return self.task.config.doc_to_image is not None

    def use_processor(self, processor) -> None:
        """Train and price with a vision-language model's processor (its image tokens, its pixels)."""
        self.processor = processor

    def images(self, doc: dict) -> list:
        return list(self.task.doc_to_image(doc)) if self.multimodal else []

    def model_text(self, text: str) -> str:
        """A prompt as the processor reads it: without a chat template, lm-eval's HFMultimodalLM puts the model's
        image token where the prompt has the placeholder; the chat template renders the placeholder itself."""
        if self.chat_tokenizer is None and self.processor is not None:
            return text.replace(IMAGE_PLACEHOLDER, self.processor.image_token)
        return text

    def use_chat(self, tokenizer) -> None:
        """Evaluate (and train) through the model's chat template; the stop sequences become its own."""
        if not getattr(tokenizer, "chat_template", None):
            raise HarnessError(f"task {self.name}: the tokenizer has no chat template; set engine.chat_template=false")
        self.chat_tokenizer = tokenizer
        gen = dict(self.task.config.generation_kwargs or {})
        stops = (tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<|endoftext|>")
        gen["until"] = list(dict.fromkeys(s for s in stops if s))
        self.task.set_config(key="generation_kwargs", value=gen)

    def training_example(self, doc: dict):
        """(prompt, completion) to train on: as evaluated, i.e. inside the chat template when it is used. An item
        that shows images is an ImageExample (harness/vision.py), encoded with the model's processor."""
        prompt, completion = self.training_pair(*self.labeled_example(doc))
        if not self.multimodal:
            return prompt, completion
        if self.processor is None:
            raise HarnessError(f"task {self.name} shows images: train it on a vision-language model "
                               "(e.g. model=tiny-random-vlm)")
        return ImageExample(self.model_text(prompt), completion, tuple(self.images(doc)), self.processor)

    def demonstration(self, doc: dict) -> tuple[str, str]:
        """(prompt, completion) of a text demonstration: a multimodal item's without its images (an in-context
        prompt shows the query's image only)."""
        prompt, completion = self.labeled_example(doc)
        return _without_images(prompt), completion

    def training_pair(self, prompt: str, completion: str) -> tuple[str, str]:
        """A (prompt, completion) pair as this task trains it: inside the chat template when it is used."""
        tok = self.chat_tokenizer
        if tok is None:
            return prompt, completion
        user = [{"role": "user", "content": prompt}]
        head = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": completion.lstrip()}], tokenize=False)
        if not full.startswith(head):  # a template that rewrites earlier turns: keep the plain pair
            return prompt, completion
        return head, full[len(head):]

    @property
    def pool_docs(self) -> list[dict]:
        return list(self.task.training_docs())

    @property
    def eval_docs(self) -> list[dict]:
        return list(self.task.test_docs())

    def labeled_example(self, doc: dict) -> tuple[str, str]:
        """(prompt, completion) for a pool document, rendered the way lm-eval renders a demonstration."""
        t = self.task
        if self.generative:  # the reference answer (a worked solution, code) is the completion
            return str(t.doc_to_text(doc)), t.config.target_delimiter + str(t.doc_to_target(doc))
        text, choices, target = t.doc_to_text(doc), t.doc_to_choice(doc), t.doc_to_target(doc)
        if t.multiple_input:  # e.g. WinoGrande: text is the gold index into per-option contexts
            prompt, answer = choices[text], target
        else:
            prompt = text
            answer = choices[target] if isinstance(target, int) else str(target)
        return prompt, t.config.target_delimiter + answer

    def unlabeled_prompt(self, doc: dict) -> str:
        """The prompt's text (a multimodal item's without its image placeholders: DnD's conditions are text)."""
        t = self.task
        if t.multiple_input:
            return str(t.doc_to_decontamination_query(doc))
        return _without_images(str(t.doc_to_text(doc)))

    def prompt_with_options(self, doc: dict) -> str:
        """The unlabeled prompt with its answer options listed (A. ..., B. ...) when the task scores options, as
        DnD's prepared prompts show them; a generative task's prompt as it is. No answer is revealed."""
        prompt = self.unlabeled_prompt(doc)
        if self.generative:
            return prompt
        choices = [str(c).strip() for c in self.task.doc_to_choice(doc)]
        return prompt.rstrip() + "\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))

    def sample_pool(self, k: int | None, seed: int) -> list[dict]:
        """k pool documents drawn with a seed (all of them, shuffled, when k is None)."""
        docs = self.pool_docs
        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
        if k is not None:
            if k > len(docs):
                raise HarnessError(f"task {self.name}: asked for {k} examples but its pool holds {len(docs)}")
            order = order[:k]
        return [docs[i] for i in order]

    def eval_indices(self, limit: int | None, seed: int) -> list[int]:
        """A seeded subset of the eval split (independent of the strategy's seed, so cells pair)."""
        n = len(self.eval_docs)
        if limit is None or limit >= n:
            return list(range(n))
        if limit < 1:
            raise HarnessError(f"eval.limit must be >= 1 (got {limit})")
        return sorted(random.Random(seed).sample(range(n), int(limit)))
