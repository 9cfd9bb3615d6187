"""`arrow`: Arrow routing (Ostapenko et al., ICML 2024) over the library's LoRAs, train-free, as peft implements it
(`ArrowConfig`, `create_arrow_model`): per adapted layer, each expert's prototype is the top right singular vector
of its weight update B·A; each token's hidden input picks the `top_k` experts by |⟨h, prototype⟩| and mixes their
LoRA outputs by a softmax over those scores. The T2L paper's Arrow row (70.7 on its 8-task average) comes from a
different library; here Arrow routes over the very library LoRAs DnD and T2L learn from.

The adaptation is a folder holding copies of the library LoRAs and `arrow.json` (harness.models.arrow_routing),
which the evaluator turns into peft's Arrow model; every query pays the routing and `top_k` LoRA branches per
adapted layer (metered by the evaluation's FLOP counter; priced analytically before it).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from baselines.dnd.library import CollectSettings, task_handle
from baselines.t2l.config import LibrarySettings
from baselines.dnd.strategy import _LibraryStrategy, library_tasks
from harness import store
from harness.config_checks import as_float, as_int
from harness.costs import PhaseMeter
from harness.errors import HarnessError
from harness.models import ARROW
from harness.strategy import AdaptContext, Adaptation
from harness.strategy_settings import settings_from


@dataclass(frozen=True)
class ArrowSettings(LibrarySettings):
    """configs/strategy/arrow.yaml: the library's keys, and the router's."""

    top_k: int
    router_temperature: float
    seed: int

    def __post_init__(self) -> None:
        super().__post_init__()
        as_int(self.top_k, "strategy.top_k", minimum=1)
        as_float(self.router_temperature, "strategy.router_temperature", positive=True)


class ArrowRouting(_LibraryStrategy):
    def _settings(self, settings) -> ArrowSettings:
        return settings_from(ArrowSettings, settings)

    def _collect_for(self, settings, model_cfg: dict, model_name: str) -> CollectSettings:
        return self._settings(settings).resolved_collect(model_cfg, model_name)

    def uses_seed(self, settings) -> bool:
        return False  # routing is deterministic; `seed` is peft's for any sampling it does

    def validate_cell(self, cfg) -> None:
        super().validate_cell(cfg)
        top_k, n = int(cfg.strategy.top_k), len(library_tasks(cfg.strategy, str(cfg.task.name)))
        if top_k > n:
            raise HarnessError(f"strategy.top_k={top_k}, but Arrow routes over {n} library LoRAs: set "
                               f"strategy.top_k to at most {n}")

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        s = self._settings(ctx.settings)
        collect = s.resolved_collect(ctx.model_cfg, ctx.model_name)
        names = library_tasks(ctx.settings, ctx.task.name)
        if len(names) < 2:
            raise HarnessError(f"Arrow needs at least two library LoRAs to route between (got {names})")
        tasks = {n: task_handle(n) for n in names}
        _, n_lora = self._serving(ctx, collect)
        routing = self._routing_params(ctx, collect, len(names))
        per_query = ctx.pricing.extra(lora_params=min(s.top_k, len(names)) * n_lora + routing)
        self._check_plan(ctx, self._planned_library(ctx, collect, names, tasks), 0.0, per_query,
                         f"the library of {len(names)} LoRAs")
        entries, costs = self._library(ctx, collect, names, tasks)
        with PhaseMeter("generate", ctx.device) as meter:  # copying the experts: no compute
            out = Path(ctx.workdir) / "adapter"
            experts = []
            for e in entries:
                target = out / "experts" / e.task
                target.mkdir(parents=True, exist_ok=True)
                for f in ("adapter_config.json", "adapter_model.safetensors"):
                    shutil.copyfile(Path(e.adapter) / f, target / f)
                experts.append(f"experts/{e.task}")
            store.write_json_atomic(out / ARROW, {"experts": experts, "top_k": s.top_k,
                                                  "router_temperature": s.router_temperature, "rng_seed": s.seed})
        use = self._charge(ctx, meter.cost, costs, per_query, f"Arrow routing over {len(names)} library LoRAs")
        return Adaptation(kind="adapter", adapter_dir=str(out), labels_used=0, costs=costs + [meter.cost],
                          budget=use, per_query_extra_flops=per_query, lora_params=len(names) * n_lora,
                          details={"library": names, "top_k": s.top_k, "router_temperature": s.router_temperature,
                                   "experts": experts, "routing_weights": routing})

    @staticmethod
    def _routing_params(ctx: AdaptContext, collect: CollectSettings, n_experts: int) -> int:
        """Weights the router multiplies each token by: one prototype (d_in) per expert per adapted module, as a
        LoRA branch counts its weights (2 FLOPs per weight and token)."""
        import torch

        total = 0
        for module_name, module in ctx.model.named_modules():
            if isinstance(module, torch.nn.Linear) and module_name.split(".")[-1] in collect.targets:
                total += n_experts * module.in_features
        return total
