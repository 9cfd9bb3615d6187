"""Controls on DnD's library (what a generator must beat): `dnd_member` (one library task's LoRA on the
target), `dnd_mean` (the parameter mean of every library checkpoint: what a collapsed generator emits) and
`dnd_nearest` (the library LoRA whose prompts embed closest to the target's)."""
from __future__ import annotations

from pathlib import Path

import torch

from baselines.dnd.config import LibraryControlSettings
from baselines.dnd.diagnostics import mean_state
from baselines.dnd.encoder import load_encoder
from baselines.dnd.generator import prompt_bank, write_adapter
from baselines.dnd.library import task_handle
from baselines.dnd.strategy import _LibraryStrategy
from harness.costs import PhaseMeter
from harness.errors import HarnessError
from harness.strategy import AdaptContext, Adaptation
from harness.strategy_settings import settings_from


class LibraryControl(_LibraryStrategy):
    """A control on DnD's library: `mode` member (one library LoRA), mean, or nearest."""

    def _settings(self, settings) -> LibraryControlSettings:
        """dnd.yaml's settings plus `mode` and `member` (checked there)."""
        return settings_from(LibraryControlSettings, settings)

    def uses_seed(self, settings) -> bool:
        """Only `member` with member=null reads the seed (seed k → library task k); mean and nearest do not."""
        return settings.get("mode") == "member" and settings.get("member") is None

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        s = ctx.settings
        preset, collect, tok, names = self._setup(ctx)
        tasks = {name: task_handle(name) for name in names}
        mode = str(s.mode)
        member = (int(s.member) if s.get("member") is not None else ctx.seed) if mode == "member" else None
        if member is not None and member >= len(names):
            raise HarnessError(f"strategy.member={member}, but the library of {ctx.task.name} has "
                               f"{len(names)} tasks (0..{len(names) - 1})")
        per_query, n_lora = self._serving(ctx, collect)
        self._check_plan(ctx, self._planned_library(ctx, collect, names, tasks), 0.0, per_query,
                         f"the library of {len(names)} LoRAs")
        entries, costs = self._library(ctx, collect, names, tasks)
        details = {"mode": mode, "library": names}
        variant = ""
        with PhaseMeter("generate", ctx.device) as meter:
            if mode == "member":
                adapter, details["member_task"] = entries[member].adapter, entries[member].task
                variant = f"member={entries[member].task}"  # each library LoRA is its own row, never a seed
            elif mode == "mean":
                state = mean_state([e.state(p) for e in entries for p in e.checkpoints])
                adapter = write_adapter(state, entries[0].adapter, Path(ctx.workdir) / "adapter")
                details["checkpoints_averaged"] = sum(len(e.checkpoints) for e in entries)
            else:
                # The target's prompts: a bank drawn like the library's (fixed seed, so the control does
                # not vary with the cell's seed), all from the adaptation pool.
                encoder = load_encoder(str(s.encoder), "cpu" if ctx.device.type != "cuda" else str(ctx.device))
                prompts = prompt_bank(ctx.task, int(s.bank), self._settings(s).meta_train.seed)
                target = self._centroid(encoder, prompts, meter)
                scores = {}
                for e in entries:
                    bank = prompt_bank(tasks[e.task], int(s.bank), self._settings(s).meta_train.seed)
                    scores[e.task] = float(torch.nn.functional.cosine_similarity(
                        target, self._centroid(encoder, bank, meter), dim=0))
                best = max(scores, key=scores.get)
                adapter = next(e.adapter for e in entries if e.task == best)
                details.update(nearest_task=best, cosine=scores, target_prompts=len(prompts))
        use = self._charge(ctx, meter.cost, costs, per_query, f"library control ({mode})")
        return Adaptation(kind="adapter", adapter_dir=str(adapter), labels_used=0, costs=costs + [meter.cost],
                          budget=use, per_query_extra_flops=per_query, lora_params=n_lora, variant=variant,
                          details=details)

    @staticmethod
    def _centroid(encoder, prompts: list[str], meter: PhaseMeter) -> torch.Tensor:
        """The mean of the prompts' sentence embeddings: one vector per prompt set."""
        with meter.count():  # lengths vary from set to set: always counted live
            vectors, lengths = encoder.embed(prompts)
        meter.add(flops_analytic=sum(encoder.flops(1, n) for n in lengths), tokens=sum(lengths))
        return vectors.mean(0)
