"""Training T2L's hypernetwork on the library (`meta_train`, one-off and shared by every target whose library it
is) and generating a LoRA from a description.

Two modes, as the official code:

- `recon`: L1 between the generated and the library's LoRAs, factorized (A and B apart) on per-element z-scores
  of the library (its mean and std over tasks, undone at generation), averaged over module types; no pass through
  the base model. Targets are each library task's final LoRA (the paper's "oracle" adapters).
- `sft`: the generated LoRA is applied to the frozen base model (peft's LoRA layers, called functionally with the
  generated weights) and the completion-only next-token loss on library tasks' pool examples (label smoothing 0.1)
  plus an L2 penalty (1e-3) on the generated A and B trains the hypernetwork; head weights start at zero with
  Bias-HyperInit (model.py), so step 0 serves peft's initial LoRA. Each step draws `tasks_per_batch` tasks, one
  training description and one example each, as the paper's hierarchical sampler.

Each step samples one of the task's training descriptions. AdamW, linear warm-up then linear decay, clipping 1.0.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from baselines.dnd.library import LibraryEntry
from baselines.t2l import descriptions as desc
from baselines.t2l.config import HypernetPreset, HypernetSettings
from baselines.t2l.model import HyperModulator, LoraShape
from harness import artifacts, provenance, store
from harness.costs import PhaseCost, PhaseMeter
from harness.errors import HarnessError

INFO = "hypernet.json"
WEIGHTS = "hypernet.safetensors"
_KEY = re.compile(r"layers\.(\d+)\..*\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")
EPS = 1e-10
LABEL_SMOOTHING = 0.1
L2_PENALTY = 1e-3


def split_state(state: dict[str, torch.Tensor], shape: LoraShape) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A peft LoRA state → per module (A [n_layers, r, in], B [n_layers, out, r])."""
    out = {m: ([None] * shape.n_layers, [None] * shape.n_layers) for m in shape.names}
    for key, value in state.items():
        match = _KEY.search(key)
        if not match or match.group(2) not in out:
            raise HarnessError(f"T2L: LoRA tensor {key} is not one of the hypernetwork's modules {shape.names}")
        layer, module, side = int(match.group(1)), match.group(2), match.group(3)
        out[module][0 if side == "A" else 1][layer] = value.float()
    try:
        return {m: (torch.stack(a), torch.stack(b)) for m, (a, b) in out.items()}
    except TypeError:
        raise HarnessError("T2L: a library LoRA lacks some layer's tensors; its layout is not the hypernetwork's") \
            from None


def join_state(generated: dict[str, tuple[torch.Tensor, torch.Tensor]], keys: list[str]) -> dict[str, torch.Tensor]:
    """Per module (A [n_layers, r, in], B [n_layers, out, r]) → a peft state with the library adapter's `keys`."""
    state = {}
    for key in keys:
        match = _KEY.search(key)
        layer, module, side = int(match.group(1)), match.group(2), match.group(3)
        state[key] = generated[module][0 if side == "A" else 1][layer].detach().float().cpu().contiguous()
    return state


@dataclass
class TrainedHypernet:
    key: str
    folder: Path
    net: HyperModulator
    stats: dict[str, torch.Tensor]  # recon: the library's per-element mean and std (z-scores undone at generation)
    cost: PhaseCost
    info: dict

    @torch.no_grad()
    def lora(self, embedding: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One description embedding (dim,) → per module (A [n_layers, r, in], B [n_layers, out, r])."""
        self.net.eval()
        out = self.net(embedding[None].to(next(self.net.parameters()).device))
        result = {}
        for m, (a, b) in out.items():
            a, b = a[0].float().cpu(), b[0].float().cpu()
            if self.stats:
                a = a * (self.stats[f"{m}.A.std"] + EPS) + self.stats[f"{m}.A.mean"]
                b = b * (self.stats[f"{m}.B.std"] + EPS) + self.stats[f"{m}.B.mean"]
            result[m] = (a, b)
        return result


def hypernet_key(preset: HypernetPreset, settings: HypernetSettings, encoder: str, library_keys: list[str],
                 emb_dim: int) -> str:
    identity = {"preset": asdict(preset), "hypernet": asdict(settings), "encoder": encoder, "emb_dim": emb_dim,
                "library": sorted(library_keys), "descriptions": desc.digest(),
                "code": provenance.code_fingerprint()["sha256"]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _folder(root: Path, tasks: list[str], key: str) -> Path:
    return Path(root) / "t2l" / f"{'+'.join(sorted(tasks))}__{key[:10]}"


def cached_cost(root: Path, tasks: list[str], key: str) -> PhaseCost | None:
    try:
        info = json.loads((_folder(root, tasks, key) / INFO).read_text())
    except (OSError, ValueError):
        return None
    ok = info.get("key") == key and (_folder(root, tasks, key) / WEIGHTS).is_file()
    return PhaseCost.from_dict(info["cost"]) if ok else None


def build_net(preset: HypernetPreset, settings: HypernetSettings, emb_dim: int) -> HyperModulator:
    return HyperModulator(preset.shape, emb_dim, settings.variant, preset.latent, preset.head_in,
                          head_bias=settings.mode == "sft")


def predict_meta_train_flops(preset: HypernetPreset, settings: HypernetSettings, emb_dim: int,
                             sft_step_flops: float = 0.0) -> float:
    """Analytic FLOPs of meta_train before it runs: forward + backward of the hypernetwork per step (and, for sft,
    the base model's LoRA training step per task, `sft_step_flops`); description encoding is small and added as
    measured."""
    with torch.device("meta"):
        net = build_net(preset, settings, emb_dim)
    n = settings.tasks_per_batch
    return settings.steps * (3 * net.flops(n) + (n * sft_step_flops if settings.mode == "sft" else 0.0))


def _lr(step: int, settings: HypernetSettings) -> float:
    warm = int(settings.warmup_frac * settings.steps)
    if step < warm:
        return (step + 1) / (warm + 1)
    return max(0.0, (settings.steps - step) / max(1, settings.steps - warm))


def _load(folder: Path, key: str, preset: HypernetPreset, settings: HypernetSettings) -> TrainedHypernet | None:
    try:
        info = json.loads((folder / INFO).read_text())
    except (OSError, ValueError):
        return None
    if info.get("key") != key or not (folder / WEIGHTS).is_file():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(folder / WEIGHTS))
        net = build_net(preset, settings, int(info["emb_dim"]))
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    except Exception:  # damaged weights: trained again
        return None
    stats = {k[6:]: v for k, v in tensors.items() if k.startswith("stats.")}
    return TrainedHypernet(key, folder, net.eval(), stats, PhaseCost.from_dict(info["cost"]), info)


def meta_train(preset: HypernetPreset, settings: HypernetSettings, encoder: desc.DescriptionEncoder,
               entries: list[LibraryEntry], root: Path, device: torch.device, progress: bool = True, say=print,
               sft=None, diagnose=None) -> tuple[TrainedHypernet, bool]:
    """The hypernetwork trained on `entries` (now, unless cached); returns (hypernet, reused). `sft`: what sft mode
    needs of the base model (an SftData). `diagnose(trained)`: the seen-task check, stored with the hypernetwork."""
    key = hypernet_key(preset, settings, encoder.name, [e.key for e in entries], encoder.dim)
    folder = _folder(root, [e.task for e in entries], key)
    return artifacts.get_or_build(
        folder, lambda found: _load(found, key, preset, settings),
        lambda work: _train(preset, settings, encoder, entries, key, folder, work, device, progress, say, sft,
                            diagnose),
        f"the T2L hypernetwork {preset.name}-{settings.variant} ({settings.mode}) on "
        f"{', '.join(e.task for e in entries)}", say)


@dataclass
class SftData:
    """What sft mode trains through: the frozen base model, its tokenizer, the library tasks' training examples
    (prompt, completion) as evaluated, and the LoRA layout (peft config) the generated weights fill."""

    model: torch.nn.Module
    tokenizer: object
    examples: dict[str, list[tuple[str, str]]]
    lora: object  # harness.trainer.LoraSettings of the library


def _train(preset: HypernetPreset, settings: HypernetSettings, encoder: desc.DescriptionEncoder,
           entries: list[LibraryEntry], key: str, folder: Path, work: Path, device: torch.device, progress: bool,
           say, sft: SftData | None, diagnose) -> TrainedHypernet:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    tasks = [e.task for e in entries]
    say(f"t2l meta_train: hypernetwork {preset.name}-{settings.variant} ({settings.mode}, {settings.steps} steps) on "
        f"{', '.join(tasks)}")
    if settings.mode == "sft" and sft is None:
        raise HarnessError("T2L sft mode needs the base model's training data (internal: pass sft=SftData)")
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    net = build_net(preset, settings, encoder.dim).to(device)
    with PhaseMeter("meta_train", device) as meter:
        embs = {}
        for e in entries:
            texts = list(desc.load(e.task).train)
            with meter.count():
                embs[e.task], flops = encoder.embed(texts)
            meter.add(flops_analytic=flops)
        stats: dict[str, torch.Tensor] = {}
        if settings.mode == "recon":
            targets = {e.task: split_state(e.state(), preset.shape) for e in entries}
            for m in preset.shape.names:
                for i, side in enumerate("AB"):
                    values = torch.stack([targets[t][m][i] for t in tasks])
                    stats[f"{m}.{side}.mean"] = values.mean(0)
                    stats[f"{m}.{side}.std"] = values.std(0, unbiased=False) if len(tasks) > 1 else \
                        torch.ones_like(values[0])
            z = {t: {m: tuple((targets[t][m][i] - stats[f"{m}.{s}.mean"]) / (stats[f"{m}.{s}.std"] + EPS)
                              for i, s in enumerate("AB")) for m in preset.shape.names} for t in tasks}
            prepare, loss_of, stop = _recon_step(net, embs, z, device)
        else:
            _bias_hyperinit(net, sft)
            prepare, loss_of, stop = _sft_step(net, embs, sft, device)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        losses = []
        net.train()
        bar = tqdm(range(settings.steps), desc="t2l meta_train", disable=not progress, leave=False, mininterval=1.0)
        try:
            for i in bar:
                batch = rng.sample(tasks, min(settings.tasks_per_batch, len(tasks)))
                key_, payload, analytic = prepare(batch, rng)
                for group in opt.param_groups:
                    group["lr"] = settings.lr * _lr(i, settings)
                with meter.count(key_):
                    loss = loss_of(payload)
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                meter.add(flops_analytic=analytic)
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):  # stop at once: nothing after a NaN step is worth training
                    raise HarnessError(f"T2L meta_train: the loss became {losses[-1]} at step {i}: lower "
                                       "strategy.hypernet.lr")
                if i % settings.log_every == 0:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        finally:
            stop()
    net.eval()
    meter.cost.details.update({"steps": settings.steps, "mode": settings.mode, "variant": settings.variant,
                               "first_loss": losses[0], "final_loss": losses[-1], "library": tasks,
                               "hypernet_key": key, "hypernet_params": sum(p.numel() for p in params)})
    curve = [[i, losses[i]] for i in range(0, len(losses), settings.log_every)] + [[len(losses) - 1, losses[-1]]]
    trained = TrainedHypernet(key, folder, net.cpu(), stats, meter.cost, {})
    info = {"key": key, "preset": preset.name, "settings": asdict(settings), "encoder": encoder.name,
            "emb_dim": encoder.dim, "library": {e.task: e.key for e in entries}, "loss_curve": curve,
            "cost": meter.cost.to_dict()}
    if diagnose is not None:
        info["reconstruction"] = diagnose(trained)
    trained.info = info
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"stats.{k}": v.contiguous() for k, v in stats.items()})
    save_file(tensors, str(work / WEIGHTS))
    store.write_json_atomic(work / INFO, info)
    return trained


def _recon_step(net: HyperModulator, embs: dict, z: dict, device):
    """(prepare, loss, stop) of a recon step: one training description per task, L1 to its z-scored LoRA."""
    def prepare(batch: list[str], rng: random.Random):
        emb = torch.stack([embs[t][rng.randrange(len(embs[t]))] for t in batch]).to(device)
        return ("t2l_recon", len(batch)), (batch, emb), 3 * net.flops(len(batch))

    def loss_of(payload) -> torch.Tensor:
        batch, emb = payload
        out = net(emb)
        loss = 0.0
        for m, (a, b) in out.items():
            ta = torch.stack([z[t][m][0] for t in batch]).to(device)
            tb = torch.stack([z[t][m][1] for t in batch]).to(device)
            loss = loss + F.l1_loss(a, ta) / 2 + F.l1_loss(b, tb) / 2
        return loss / len(out)

    return prepare, loss_of, lambda: None


def _peft_names(peft_model, shape: LoraShape) -> dict[tuple[str, int, str], str]:
    """(module, layer, A|B) → the parameter name of peft's LoRA weight in `peft_model`."""
    names = {}
    for name, _ in peft_model.named_parameters():
        match = _KEY.search(name)
        if match and match.group(2) in shape.names:
            names[(match.group(2), int(match.group(1)), match.group(3))] = name
    return names


@torch.no_grad()
def _bias_hyperinit(net: HyperModulator, sft: SftData) -> None:
    """Head biases from peft's own initial A (drawn as peft draws it for this layout, seeded by torch's state)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=sft.lora.rank, lora_alpha=sft.lora.alpha, target_modules=list(sft.lora.target_modules),
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(sft.model, cfg)
    try:
        init = {}
        for (module, layer, side), name in _peft_names(peft_model, net.shape).items():
            if side == "A" and layer == 0:
                init[module] = dict(peft_model.named_parameters())[name].detach().float().cpu()
    finally:
        peft_model.unload()
    net.init_from_lora(init)


def _sft_step(net: HyperModulator, embs: dict, sft: SftData, device):
    """(prepare, loss, stop) of an sft step. The base model is wrapped once in peft's LoRA layers for the whole
    training; each task's generated weights are passed to it functionally; stop() unwraps the base model."""
    from peft import LoraConfig, get_peft_model
    from torch.func import functional_call

    from harness.flops import ModelShape
    from harness.trainer import _collate, encode_example

    tok = sft.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = {t: [encode_example(tok, p, c, sft.lora.max_length) for p, c in ex] for t, ex in sft.examples.items()}
    empty = sorted(t for t in embs if not encoded.get(t))
    if empty:
        raise HarnessError(f"T2L sft: library task {empty[0]} has no training examples in its pool")
    cfg = LoraConfig(r=sft.lora.rank, lora_alpha=sft.lora.alpha, target_modules=list(sft.lora.target_modules),
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(sft.model, cfg)
    peft_model.eval()  # no dropout; the base stays frozen (nothing of it is in the optimizer)
    for p in peft_model.parameters():
        p.requires_grad_(False)
    names = _peft_names(peft_model, net.shape)
    shape = ModelShape.of(peft_model)

    def prepare(batch: list[str], rng: random.Random):
        emb = torch.stack([embs[t][rng.randrange(len(embs[t]))] for t in batch]).to(device)
        examples = [encoded[t][rng.randrange(len(encoded[t]))] for t in batch]
        lengths = tuple(len(ids) for ids, _ in examples)
        analytic = 3 * net.flops(len(batch)) + sum(shape.lora_train_step(1, n) for n in lengths)
        return ("t2l_sft", lengths), (emb, examples), analytic

    def loss_of(payload) -> torch.Tensor:
        emb, examples = payload
        out = net(emb)
        loss = 0.0
        for i, example in enumerate(examples):
            weights, penalty = {}, 0.0
            for m, (a, b) in out.items():
                penalty = penalty + a[i].pow(2).mean() + b[i].pow(2).mean()
                for layer in range(net.shape.n_layers):
                    weights[names[(m, layer, "A")]] = a[i, layer]
                    weights[names[(m, layer, "B")]] = b[i, layer]
            tensors = {k: v.to(device) for k, v in _collate([example], pad).items()}
            labels = tensors.pop("labels")
            logits = functional_call(peft_model, weights, args=(), kwargs=tensors, strict=False).logits
            ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                 ignore_index=-100, label_smoothing=LABEL_SMOOTHING)
            loss = loss + ce + L2_PENALTY * penalty / len(out)
        return loss / len(examples)

    def stop() -> None:
        peft_model.unload()
        sft.model.eval()

    return prepare, loss_of, stop
