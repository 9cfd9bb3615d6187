"""adapter: evaluate an existing peft LoRA adapter folder (yours, or one another tool produced)."""
import hashlib
from pathlib import Path

from harness.budget import BudgetUse
from harness.errors import HarnessError
from harness.strategy import AdaptContext, Adaptation, register_strategy


@register_strategy("adapter")
class ExistingAdapter:
    def validate(self, settings) -> None:
        path = settings.get("path")
        if not path:
            raise HarnessError("strategy=adapter needs a folder: add strategy.path=/path/to/adapter")
        folder = Path(str(path)).expanduser()
        if not folder.is_dir():
            raise HarnessError(f"adapter path {folder} does not exist: pass strategy.path=<a peft adapter folder>")
        if not (folder / "adapter_config.json").is_file():
            raise HarnessError(f"{folder} has no adapter_config.json: pass the folder peft's save_pretrained wrote")

    def fingerprint(self, settings) -> str:
        """Digest of the adapter's files: a retrained adapter at the same path is a new cell."""
        digest = hashlib.sha256()
        for file in sorted(Path(str(settings.path)).expanduser().iterdir()):
            if file.is_file():
                digest.update(file.name.encode())
                digest.update(file.read_bytes())
        return digest.hexdigest()

    def adapt(self, ctx: AdaptContext) -> Adaptation:
        b = ctx.budget
        folder = Path(str(ctx.settings.path)).expanduser().resolve()
        labels = ctx.settings.get("labels_used")
        return Adaptation(kind="adapter", adapter_dir=str(folder), labels_used=int(labels or 0),
                          budget=BudgetUse(b.name, b.kind, b.amount, b.horizon, 0.0, False, "cost not known here"),
                          details={"labels_used_known": labels is not None})
