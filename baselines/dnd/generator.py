"""Training DnD's generator (`meta_train`) and generating adapters with it (`generate`).

Each training sample pairs one library checkpoint with a fresh random batch of N prompts from the
same task's condition bank. Loss: MSE per token, weighted by that token's std across the
library's checkpoints (normalized per task to mean 1, then averaged over tasks); noise on the
conditions and the targets; AdamW, one warm-up step then cosine, gradient clipping.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from baselines.dnd.config import GeneratorPreset, MetaTrainSettings
from baselines.dnd.encoder import ConditionEncoder
from baselines.dnd.library import LibraryEntry
from baselines.dnd.model import Generator
from baselines.dnd.tokenizer import LoraTokenizer
from harness import artifacts, provenance, store
from harness.costs import PhaseCost, PhaseMeter
from harness.errors import HarnessError
from harness.tasks import TaskHandle

GENERATOR = "generator.json"
WEIGHTS = "generator.safetensors"


def checkpoint_tokens(entry: LibraryEntry, tok: LoraTokenizer) -> torch.Tensor:
    """(n_checkpoints, n_tokens, r+2, w+2) tokens of an entry's trajectory."""
    return torch.stack([tok.tokenize(entry.state(p), torch.float32) for p in entry.checkpoints])


def token_weights(per_task: list[torch.Tensor]) -> torch.Tensor:
    """Per-token loss weight: the std across checkpoints, normalized within each task, averaged over tasks."""
    out = []
    for tokens in per_task:
        std = tokens.std(dim=0, unbiased=False) if len(tokens) > 1 else torch.ones_like(tokens[0])
        std = std / std.sum().clamp_min(1e-12)
        out.append(std.mean(dim=(1, 2)) * std.numel())
    return torch.stack(out).mean(dim=0)


def prompt_bank(task: TaskHandle, size: int, seed: int) -> list[str]:
    docs = task.sample_pool(min(size, len(task.pool_docs)), seed)
    return [task.prompt_with_options(d) for d in docs]


@dataclass
class TrainedGenerator:
    key: str
    folder: Path
    preset: GeneratorPreset
    generator: Generator
    cost: PhaseCost
    info: dict


def generator_key(preset: GeneratorPreset, encoder: str, settings: MetaTrainSettings, bank: int,
                  library_keys: list[str]) -> str:
    identity = {"preset": asdict(preset), "encoder": encoder, "meta_train": asdict(settings), "bank": bank,
                "library": sorted(library_keys),  # each library key covers the model, data and package versions
                "code": provenance.code_fingerprint()["sha256"]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _generator_folder(root: Path, tasks: list[str], key: str) -> Path:
    return Path(root) / "generators" / f"{'+'.join(sorted(tasks))}__{key[:10]}"


def cached_cost(root: Path, tasks: list[str], key: str) -> PhaseCost | None:
    """The recorded meta_train cost of a generator already trained, else None (nothing is loaded)."""
    folder = _generator_folder(root, tasks, key)
    try:
        info = json.loads((folder / GENERATOR).read_text())
    except (OSError, ValueError):
        return None
    return PhaseCost.from_dict(info["cost"]) if info.get("key") == key and (folder / WEIGHTS).is_file() else None


def predict_meta_train_flops(preset: GeneratorPreset, encoder: ConditionEncoder, banks: list[int],
                             settings: MetaTrainSettings) -> float:
    """Analytic FLOPs of `meta_train` before running it: encoding each task's condition bank (`banks`: their
    sizes), then forward + backward of the decoder per sample and step."""
    with torch.device("meta"):
        flops = Generator(preset).flops()
    encode = sum(encoder.flops(n, preset.prompt_tokens) for n in banks)
    return encode + 3 * flops * settings.batch_size * settings.steps


def predict_generate_flops(preset: GeneratorPreset, encoder: ConditionEncoder) -> float:
    with torch.device("meta"):
        flops = Generator(preset).flops()
    return encoder.flops(preset.n_prompts, preset.prompt_tokens) + flops


def _schedule(step: int, settings: MetaTrainSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / (settings.warmup_steps + 1)
    span = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, span)))


def _load(folder: Path, key: str, preset: GeneratorPreset) -> TrainedGenerator | None:
    try:
        info = json.loads((folder / GENERATOR).read_text())
    except (OSError, ValueError):
        return None
    if info.get("key") != key or not (folder / WEIGHTS).is_file():
        return None
    from safetensors.torch import load_file

    gen = Generator(preset)
    try:
        gen.load_state_dict(load_file(str(folder / WEIGHTS)))
    except Exception:  # damaged weights (a truncated copy, a full disk): the generator is trained again
        return None
    return TrainedGenerator(key, folder, preset, gen.eval(), PhaseCost.from_dict(info["cost"]), info)


def meta_train(preset: GeneratorPreset, encoder: ConditionEncoder, entries: list[LibraryEntry],
               tasks: dict[str, TaskHandle], tok: LoraTokenizer, settings: MetaTrainSettings, bank: int, root: Path,
               device: torch.device, progress: bool = True, say=print,
               score=None) -> tuple[TrainedGenerator, bool]:
    """The generator trained on `entries` (trained now unless cached); returns (generator, reused). `score(task,
    state)`, when given, scores a generated LoRA on a library task's own eval items (the seen-task check's accuracy
    half: {doc_id: score})."""
    key = generator_key(preset, encoder.name, settings, bank, [e.key for e in entries])
    folder = _generator_folder(root, [e.task for e in entries], key)
    # Built under a lock (harness/artifacts.py): targets that need the same generator at once wait for one build.
    return artifacts.get_or_build(folder, lambda found: _load(found, key, preset),
                                  lambda work: _train(preset, encoder, entries, tasks, tok, settings, bank, key, folder,
                                                      work, device, progress, say, score),
                                  f"the DnD generator {preset.name} on {', '.join(e.task for e in entries)}", say)


def _train(preset: GeneratorPreset, encoder: ConditionEncoder, entries: list[LibraryEntry],
           tasks: dict[str, TaskHandle], tok: LoraTokenizer, settings: MetaTrainSettings, bank: int, key: str,
           folder: Path, work: Path, device: torch.device, progress: bool, say, score=None) -> TrainedGenerator:
    """Train the generator and save it in `work` (published at `folder` by the caller)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    say(f"dnd meta_train: generator {preset.name} on {', '.join(e.task for e in entries)} ({settings.steps} steps)")
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    gen = Generator(preset).to(device).train()
    params = [p for p in gen.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    n, L = preset.n_prompts, preset.prompt_tokens
    with PhaseMeter("meta_train", device) as meter:
        targets, banks = [], []
        for e in entries:
            targets.append(checkpoint_tokens(e, tok))
            prompts = prompt_bank(tasks[e.task], bank, settings.seed)
            if len(prompts) < n:
                raise HarnessError(f"library task {e.task}: its pool has {len(prompts)} prompts, the preset needs "
                                   f"{n} per condition")
            with meter.count(("encode", len(prompts), L)):
                banks.append(encoder.encode(prompts, L))
            meter.add(flops_analytic=encoder.flops(len(prompts), L), tokens=len(prompts) * L)
        weights = token_weights(targets).to(device)[None, :, None, None]
        if gen.base is not None:  # the decoder learns each task's departure from the library's mean tokens
            with torch.no_grad():
                gen.base.copy_(torch.cat(targets).mean(dim=0).to(device))
        pairs = [(t, c) for t in range(len(entries)) for c in range(len(targets[t]))]
        step_flops = 3 * gen.flops() * settings.batch_size  # forward + backward (input and weight grads)
        losses = []
        bar = tqdm(range(settings.steps), desc="meta_train", disable=not progress, leave=False, mininterval=1.0)
        for step in bar:
            picks = [pairs[rng.randrange(len(pairs))] for _ in range(settings.batch_size)]
            cond = torch.stack([banks[t][rng.sample(range(len(banks[t])), n)] for t, _ in picks]).to(device)
            target = torch.stack([targets[t][c] for t, c in picks]).to(device)
            cond = cond + torch.randn_like(cond) * settings.condition_noise
            target = target + torch.randn_like(target) * settings.target_noise
            for group in opt.param_groups:
                group["lr"] = settings.lr * _schedule(step, settings)
            with meter.count(("meta_step", settings.batch_size)):
                out = gen(cond)
                loss = ((out - target) ** 2 * weights).mean()
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            meter.add(flops_analytic=step_flops)
            losses.append(float(loss.detach()))
            if step % settings.log_every == 0 or step == settings.steps - 1:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    gen.eval()
    meter.cost.details.update({"steps": settings.steps, "batch_size": settings.batch_size, "first_loss": losses[0],
                               "final_loss": losses[-1], "library": [e.task for e in entries],
                               "generator_key": key, "generator_params": sum(p.numel() for p in params)})
    # The loss curve, every `log_every` steps and the last one, is kept with the generator.
    curve = [[i, losses[i]] for i in range(0, len(losses), settings.log_every)] + [[len(losses) - 1, losses[-1]]]
    info = {"key": key, "preset": preset.name, "encoder": encoder.name, "settings": asdict(settings),
            "bank": bank, "library": {e.task: e.key for e in entries}, "loss_curve": curve,
            "cost": meter.cost.to_dict(),
            "reconstruction": seen_task_reconstruction(gen, preset, encoder, entries, tasks, tok, bank, settings.seed,
                                                       device, score, say)}
    save_file({k: v.detach().cpu().contiguous() for k, v in gen.state_dict().items()}, str(work / WEIGHTS))
    store.write_json_atomic(work / GENERATOR, info)
    return TrainedGenerator(key, folder, preset, gen.cpu(), meter.cost, info)


@torch.no_grad()
def seen_task_reconstruction(gen: Generator, preset: GeneratorPreset, encoder: ConditionEncoder,
                             entries: list[LibraryEntry], tasks: dict[str, TaskHandle], tok: LoraTokenizer, bank: int,
                             seed: int, device: torch.device, score=None, say=print) -> dict:
    """diagnostics.reconstruction for a freshly trained generator: per library task, N prompts of the bank it
    trained on, and N pool prompts outside that bank (where the pool has them). With `score`, also the accuracy of
    the LoRA generated from the seen prompts on the task's own eval items (the items its library LoRA was checked
    on), beside the library LoRA's and base's there, and the share of the library LoRA's gain it recovers. Not part
    of any phase's cost: a check on the generator, timed apart (`wall_s`)."""
    import time

    from baselines.dnd.diagnostics import reconstruction

    start, n = time.perf_counter(), preset.n_prompts
    seen, held = {}, {}
    for e in entries:
        task = tasks[e.task]
        trained_on = prompt_bank(task, bank, seed)
        seen[e.task] = trained_on[:n]
        known = set(trained_on)
        rest = [p for p in (task.prompt_with_options(d) for d in task.sample_pool(None, seed + 1)) if p not in known]
        held[e.task] = rest[:n] if len(rest) >= n else []

    def generate(prompts):
        cond = encoder.encode(prompts, preset.prompt_tokens).to(device)[None]
        return tok.detokenize(gen(cond)[0].float().cpu())

    out = reconstruction(generate, entries, seen, held)
    if score is not None:
        from baselines.dnd.diagnostics import mean_state

        say(f"dnd meta_train: scoring the generator's adapters and the library mean on its {len(entries)} library "
            f"tasks' own items")
        library_mean = mean_state([e.state(p) for e in entries for p in e.checkpoints])  # what dnd_mean serves
        out.update(seen_task_accuracy({e.task: score(e.task, generate(seen[e.task])) for e in entries}, entries,
                                      {e.task: score(e.task, library_mean) for e in entries}))
    out["wall_s"] = round(time.perf_counter() - start, 3)
    return out


def seen_task_accuracy(scores: dict[str, dict], entries: list[LibraryEntry], mean_scores: dict | None = None) -> dict:
    """Per library task, the generated LoRA's accuracy (`scores[task]`: {doc_id: score}) beside the library LoRA's
    and base's on the same items (the entry's own-task check) and the library mean's (`mean_scores`, the parameter
    mean of every library checkpoint), and over the tasks whose library LoRA beats base the share of the library's
    gain the generated LoRAs recover: sum(generated - base) / sum(library - base)."""
    rows, gained, gain = {}, 0.0, 0.0
    mean_of = lambda values: sum(values.values()) / max(len(values), 1)  # noqa: E731
    for e in entries:
        own = e.checks.get("own_task")
        values = scores[e.task]
        acc = mean_of(values)
        row = {"generated": acc, "n": len(values)}
        if mean_scores is not None:
            row["library_mean"] = mean_of(mean_scores[e.task])
        if own and own["n"] == len(values):
            row.update(library_lora=own["lora"], base=own["base"], library_beats_base=own["beats_base"])
            if own["beats_base"]:
                gained += acc - own["base"]
                gain += own["lora"] - own["base"]
        rows[e.task] = row
    return {"accuracy": rows, "gain_recovered": gained / gain if gain > 0 else None,
            "gain_recovered_over": sorted(t for t, r in rows.items() if r.get("library_beats_base"))}


@torch.no_grad()
def generate_tokens(trained: TrainedGenerator, encoder: ConditionEncoder, prompts: list[str], meter: PhaseMeter,
                    device: torch.device) -> torch.Tensor:
    """One forward pass: N prompts → (n_tokens, r+2, w+2) parameter tokens."""
    p = trained.preset
    gen = trained.generator.to(device)
    with meter.count(("generate", len(prompts), p.prompt_tokens)):
        cond = encoder.encode(prompts, p.prompt_tokens).to(device)[None]
        tokens = gen(cond)[0].float().cpu()
    meter.add(flops_analytic=encoder.flops(len(prompts), p.prompt_tokens) + trained.generator.flops(),
              tokens=len(prompts) * p.prompt_tokens)
    return tokens


def write_adapter(state: dict[str, torch.Tensor], template: Path, out: Path) -> Path:
    """A standard peft adapter folder: the library's adapter_config.json and the generated weights."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(template) / "adapter_config.json", out / "adapter_config.json")
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "adapter_model.safetensors"))
    return out
