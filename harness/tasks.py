"""Tasks as the harness sees them: an lm-eval task plus its adaptation pool and description."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from functools import lru_cache

from harness.errors import HarnessError
from harness.pools import PoolInfo, pool_info_for
from harness.settings import TASKS_DIR


def quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


@lru_cache(maxsize=1)
def task_manager():
    from lm_eval.tasks import TaskManager

    quiet_lm_eval()
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, verbosity="ERROR")


def load_lm_eval_task(lm_eval_name: str):
    from lm_eval.tasks import get_task_dict

    manager = task_manager()
    if lm_eval_name not in manager.all_tasks:
        raise HarnessError(f"lm-eval task {lm_eval_name!r} is not defined under {TASKS_DIR}: check task.lm_eval_task")
    return get_task_dict([lm_eval_name], manager)[lm_eval_name]


@dataclass
class TaskHandle:
    name: str
    lm_eval_name: str
    description: str
    task: object  # lm_eval ConfigurableTask, holding the `pool` and `eval` splits
    pool_info: PoolInfo

    @classmethod
    def from_cfg(cls, cfg) -> "TaskHandle":
        task = load_lm_eval_task(cfg.lm_eval_task)
        info = pool_info_for(dict(task.config.dataset_kwargs or {}))
        return cls(cfg.name, cfg.lm_eval_task, str(cfg.description).strip(), task, info)

    @property
    def pool_docs(self) -> list[dict]:
        return list(self.task.training_docs())

    @property
    def eval_docs(self) -> list[dict]:
        return list(self.task.test_docs())

    def labeled_example(self, doc: dict) -> tuple[str, str]:
        """(prompt, completion) for a pool document, rendered the way lm-eval renders a demonstration."""
        t = self.task
        text, choices, target = t.doc_to_text(doc), t.doc_to_choice(doc), t.doc_to_target(doc)
        if t.multiple_input:  # e.g. WinoGrande: text is the gold index into per-option contexts
            prompt, answer = choices[text], target
        else:
            prompt = text
            answer = choices[target] if isinstance(target, int) else str(target)
        return prompt, t.config.target_delimiter + answer

    def unlabeled_prompt(self, doc: dict) -> str:
        t = self.task
        if t.multiple_input:
            return str(t.doc_to_decontamination_query(doc))
        return str(t.doc_to_text(doc))

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

    def query_profile(self, tokenizer, n_docs: int = 64) -> tuple[float, float]:
        """(forward passes per query, tokens per forward pass), averaged over pool documents.

        Mirrors how lm-eval's HF model scores a multiple-choice query: one request per choice, except
        that requests sharing a context whose continuations are all single tokens share one pass.
        """
        t = self.task
        forwards = tokens = 0
        docs = self.sample_pool(min(n_docs, len(self.pool_docs)), 0)
        for doc in docs:
            choices = t.doc_to_choice(doc)
            if t.multiple_input:
                pairs = [(c, t.config.target_delimiter + str(t.doc_to_target(doc))) for c in choices]
            else:
                pairs = [(str(t.doc_to_text(doc)), t.config.target_delimiter + c) for c in choices]
            lengths = [(len(tokenizer(ctx, add_special_tokens=False)["input_ids"]),
                        len(tokenizer(cont, add_special_tokens=False)["input_ids"])) for ctx, cont in pairs]
            if not t.multiple_input and all(cont == 1 for _, cont in lengths):
                forwards, tokens = forwards + 1, tokens + lengths[0][0] + 1
            else:
                forwards, tokens = forwards + len(pairs), tokens + sum(a + b for a, b in lengths)
        n = max(1, len(docs))
        return forwards / n, tokens / max(1, forwards)
