"""adapter: evaluate an existing peft LoRA adapter folder (yours, or one another tool produced)."""
import hashlib
from dataclasses import dataclass
from pathlib import Path

from harness.budget import BudgetUse
from harness.errors import HarnessError
from harness.models import adapter_problem
from harness.strategy import AdaptContext, Adaptation, Strategy
from harness.strategy_settings import settings_from


@dataclass(frozen=True)
class AdapterSettings:
    """configs/strategy/adapter.yaml."""

    path: str | None  # the peft adapter folder (required at run time: strategy.path=...)
    labels_used: int | None  # labels that made it, when known (charged on an examples budget)


class ExistingAdapter(Strategy):
    def adapts_images(self, settings) -> bool:
        return True  # a given peft adapter for this model, whatever its task shows

    def validate(self, settings) -> None:
        path = settings_from(AdapterSettings, settings).path
        if not path:
            raise HarnessError("strategy=adapter needs a folder: add strategy.path=/path/to/adapter")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise HarnessError(f"adapter path {folder} does not exist: pass strategy.path=<a peft adapter folder>")
        if not (folder / "adapter_config.json").is_file():
            raise HarnessError(f"{folder} has no adapter_config.json: pass the folder peft's save_pretrained wrote")
        problem = adapter_problem(folder)
        if problem:
            raise HarnessError(f"adapter {folder} cannot be loaded: {problem}: save or copy it again, complete, "
                               "and pass that folder as strategy.path")

    def fingerprint(self, settings) -> str:
        """Digest of the adapter's files: a retrained adapter at the same path is a new cell."""
        digest = hashlib.sha256()
        for file in sorted(Path(str(settings.path)).expanduser().iterdir()):
            if file.is_file():
                digest.update(file.name.encode())
                digest.update(file.read_bytes())
        return digest.hexdigest()

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        from safetensors.torch import load_file

        b = ctx.budget
        folder = Path(str(ctx.settings.path)).expanduser().resolve()
        labels = settings_from(AdapterSettings, ctx.settings).labels_used
        weights = folder / "adapter_model.safetensors"
        # Served unmerged: every query pays 2 FLOPs per adapter weight and token processed.
        n_lora = sum(t.numel() for k, t in load_file(str(weights)).items() if "lora_" in k) if weights.is_file() else 0
        extra = ctx.pricing.extra(lora_params=n_lora)
        use = BudgetUse.of(b, own=float(labels or 0) if b.kind == "examples" else 0.0,
                           queries=b.horizon * extra if b.kind == "flops" else 0.0,
                           reason="how the adapter was made is not known here: only serving it (and labels_used, "
                                  "when given) is charged")
        return Adaptation(kind="adapter", adapter_dir=str(folder), labels_used=int(labels or 0), budget=use,
                          per_query_extra_flops=extra, lora_params=n_lora,
                          details={"labels_used_known": labels is not None})
