"""Drag-and-Drop (baselines/dnd) units, checked against numbers: the LoRA tokenizer, the paper's
decoder sizes and FLOPs, the condition encoder and the preset/model fit check. CPU, a few seconds."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from baselines.dnd.config import PRESETS, get_preset
from baselines.dnd.model import Generator
from baselines.dnd.tokenizer import MODULE_ORDER, LoraTokenizer, default_width, lora_shapes, shapes_of_model
from harness.errors import HarnessError
from harness.flops import flop_counter

# (layers, hidden, intermediate, kv_dim) of the base models; rank, expected width, tokens, token shape.
TINY = dict(n_layers=2, hidden=64, intermediate=128, kv_dim=32)
SMOLLM2_135M = dict(n_layers=30, hidden=576, intermediate=1536, kv_dim=192)
QWEN_05B = dict(n_layers=24, hidden=896, intermediate=4864, kv_dim=128)
QWEN_15B = dict(n_layers=28, hidden=1536, intermediate=8960, kv_dim=256)
QWEN_7B = dict(n_layers=28, hidden=3584, intermediate=18944, kv_dim=512)

LAYOUTS = [  # id, model dims, rank, width, n_tokens, token shape
    ("tiny-random", TINY, 8, 32, 64, (10, 34)),
    ("smollm2-135m", SMOLLM2_135M, 8, 192, 1590, (10, 194)),
    ("qwen2.5-0.5b", QWEN_05B, 8, 128, 4296, (10, 130)),
]


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x - y).norm() / x.norm()).item()


def _lora_state(shapes, seed=0):
    """A LoRA as it looks in training: A ~ kaiming-uniform (peft's init), B small but non-zero."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, (rows, cols) in shapes.items():
        if ".lora_A." in key:
            state[key] = (torch.rand(rows, cols, generator=g) * 2 - 1) / cols ** 0.5
        else:
            state[key] = torch.randn(rows, cols, generator=g) * 5e-3 + 1e-3
    return state


# --- tokenizer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,dims,rank,width,n_tokens,token_shape", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_tokenizer_round_trip(name, dims, rank, width, n_tokens, token_shape):
    shapes = lora_shapes(**dims, rank=rank)
    assert default_width(shapes) == width
    tok = LoraTokenizer(shapes, rank, width)
    assert (tok.n_tokens, tok.token_shape) == (n_tokens, token_shape)
    assert tok.shapes == shapes
    state = _lora_state(shapes)
    keys = list(shapes)
    state[keys[1]] = torch.zeros(shapes[keys[1]])  # q_proj B of layer 0 at init
    state[keys[-1]] = torch.full(shapes[keys[-1]], -0.25)  # a constant tensor
    tokens = tok.tokenize(state)
    assert tokens.shape == (n_tokens, *token_shape) and tokens.dtype == torch.float64
    assert torch.isfinite(tokens).all()
    back = tok.detokenize(tokens)
    assert list(back) == [s.key for s in tok.slots] and set(back) == set(state)
    for key, x in state.items():
        assert back[key].shape == x.shape, key
        if key == keys[1]:
            assert back[key].abs().max().item() == 0.0
        else:
            assert _rel(x, back[key]) < 1e-5, key


def test_detokenize_rejects_batched_tokens():
    shapes = lora_shapes(**TINY, rank=8)
    tok = LoraTokenizer(shapes, 8, 32)
    tokens = tok.tokenize(_lora_state(shapes))
    with pytest.raises(HarnessError, match="do not match the layout"):
        tok.detokenize(tokens[None])


def test_tokenizer_round_trip_holds_for_tiny_stds():
    """The std code log(0.9·σ + 0.1) would resolve σ only to ~1e-8 in float32 (1e-4 relative error at
    σ=1e-4, a young LoRA B); tokens are computed in float64, so the round trip stays exact, while the
    float32 tokens the generator learns from show the floor."""
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tok = LoraTokenizer({key: (8, 896)}, 8, 128)
    g = torch.Generator().manual_seed(1)
    errors = {}
    for std in (1e-1, 1e-2, 1e-4):
        x = torch.randn(8, 896, generator=g) * std
        errors[std] = _rel(x, tok.detokenize(tok.tokenize({key: x}))[key])
        assert errors[std] < 1e-6, (std, errors[std])
    x = torch.randn(8, 896, generator=g) * 1e-4
    assert 1e-6 < _rel(x, tok.detokenize(tok.tokenize({key: x}, torch.float32))[key]) < 1e-3


def test_token_order_is_per_layer_qkvo_up_gate_down_a_before_b():
    shapes = lora_shapes(**TINY, rank=8)
    shuffled = dict(sorted(shapes.items(), reverse=True))  # the input order must not matter
    tok = LoraTokenizer(shuffled, 8, 32)
    keys = [s.key for s in tok.slots]
    layer0 = [k for k in keys if ".layers.0." in k]
    expected = [(m, ab) for m in MODULE_ORDER for ab in "AB"]
    assert [(k.split(".")[-3], k.split(".")[-2][-1]) for k in layer0] == expected
    assert keys[:14] == layer0 and all(".layers.1." in k for k in keys[14:])
    # contiguous token ranges: q A (64 in → 2 chunks), q B (64 out → 2), k A (2), k B (kv 32 → 1) ...
    assert [(s.first, s.count) for s in tok.slots[:4]] == [(0, 2), (2, 2), (4, 2), (6, 1)]
    assert sum(s.count for s in tok.slots) == tok.n_tokens == 64


def test_chunk_scales_in_last_two_rows_and_columns():
    shapes = lora_shapes(**TINY, rank=8)
    tok = LoraTokenizer(shapes, 8, 32)
    state = _lora_state(shapes, seed=3)
    tokens = tok.tokenize(state, torch.float32)
    r, w = 8, 32
    # token 3 is the second chunk of layer 0's q_proj Bᵀ (8 × 64): columns 32..63 of Bᵀ
    chunk = state[tok.slots[1].key].T[:, w: 2 * w]
    t = tokens[tok.slots[1].first + 1]
    mean, std = chunk.mean(), chunk.std(unbiased=False)
    torch.testing.assert_close(t[r, :], torch.full((w + 2,), 8 * mean.item()))
    torch.testing.assert_close(t[:r, w], torch.full((r,), 8 * mean.item()))
    code = torch.log(0.9 * std + 0.1) + 1.6
    torch.testing.assert_close(t[r + 1, :], torch.full((w + 2,), code.item()))
    torch.testing.assert_close(t[:r, w + 1], torch.full((r,), code.item()))
    torch.testing.assert_close(t[:r, :w], (chunk - mean) / std)  # the values, z-scored
    z = tokens[:, :r, :w]
    torch.testing.assert_close(z.mean(dim=(1, 2)), torch.zeros(len(tokens)), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(1, 2), unbiased=False), torch.ones(len(tokens)), atol=1e-4, rtol=0)


def test_tokenizer_rejects_bad_width_and_shape():
    shapes = lora_shapes(**TINY, rank=8)
    with pytest.raises(HarnessError, match="width 48"):
        LoraTokenizer(shapes, 8, 48)
    with pytest.raises(HarnessError, match="rank 8"):
        LoraTokenizer(shapes, 4, 32)
    tok = LoraTokenizer(shapes, 8, 32)
    tokens = tok.tokenize(_lora_state(shapes))
    for bad in (tokens[:-1], tokens[:, :-1], tokens[..., :-1]):
        with pytest.raises(HarnessError, match=r"\(64, 10, 34\)"):
            tok.detokenize(bad)
    with pytest.raises(HarnessError, match="lacks 1 tensors"):
        tok.tokenize({k: v for k, v in _lora_state(shapes).items() if ".layers.1.self_attn.v_proj.lora_B" not in k})


def test_shapes_of_model_match_lora_shapes():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        smol = LlamaForCausalLM(LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                            num_attention_heads=9, num_key_value_heads=3, vocab_size=49152))
        qwen = Qwen2ForCausalLM(Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                            num_attention_heads=14, num_key_value_heads=2, vocab_size=151936))
    assert shapes_of_model(smol, 8) == lora_shapes(**SMOLLM2_135M, rank=8)
    assert shapes_of_model(qwen, 8) == lora_shapes(**QWEN_05B, rank=8)


@pytest.mark.parametrize("dims,rank,width,n_tokens,preset", [
    (QWEN_05B, 8, 128, 4296, "qwen2.5-0.5b"),
    (QWEN_15B, 16, 256, 4508, "qwen2.5-1.5b"),
    (QWEN_15B, 16, 256, 4508, "qwen2.5-1.5b-code"),
    (QWEN_7B, 16, 512, 4928, "qwen2.5-7b"),
    (SMOLLM2_135M, 8, 192, 300, "smollm2-small"),  # q_proj and v_proj only
    (TINY, 8, 32, 64, "tiny-random"),
])
def test_default_width_and_token_counts_match_presets(dims, rank, width, n_tokens, preset):
    p = get_preset(preset)
    shapes = lora_shapes(**dims, rank=rank, targets=p.targets)
    assert default_width(shapes) == width
    tok = LoraTokenizer(shapes, rank, width)
    assert tok.n_tokens == n_tokens == p.features[-1][0] == p.n_tokens
    assert tok.token_shape == p.token_shape == (rank + 2, width + 2)
    assert (p.rank, p.width) == (rank, width)
    p.check_fits(tok.n_tokens, rank, width, preset)  # fits: no error


# --- decoder: the paper's sizes on the meta device, FLOPs against torch's counter on CPU ---------------

@pytest.mark.parametrize("name,decoder_m,projection_m,flops", [
    ("qwen2.5-0.5b", 1113.20, 0.0, 8.258e12),
    ("qwen2.5-1.5b", 1775.33, 5.61, 3.807e13),
    ("qwen2.5-7b", 1936.52, 5.61, 5.284e13),
])
def test_paper_presets_on_meta(name, decoder_m, projection_m, flops):
    p = get_preset(name)
    with torch.device("meta"):
        gen = Generator(p)
        out = gen.decoder(torch.empty(1, *p.features[0]))
        full = gen(torch.empty(1, p.n_prompts, p.prompt_tokens, p.encoder_dim))
    assert gen.decoder.n_params() / 1e6 == pytest.approx(decoder_m, abs=0.01)
    proj = sum(x.numel() for x in gen.projection.parameters()) if gen.projection is not None else 0
    assert proj / 1e6 == pytest.approx(projection_m, abs=0.01)
    assert out.shape == full.shape == (1, p.n_tokens, p.rank + 2, p.width + 2)
    assert gen.flops() == pytest.approx(flops, rel=1e-3)
    assert len(gen.decoder.layers) == len(p.features) - 1


@pytest.mark.parametrize("name", ["tiny-random", "smollm2-small"])
def test_analytic_flops_match_flop_counter(name):
    p = get_preset(name)
    torch.manual_seed(0)
    gen = Generator(p).eval()
    x = torch.randn(1, p.n_prompts, p.prompt_tokens, p.encoder_dim)
    with torch.no_grad(), flop_counter() as counter:
        out = gen(x)
    assert out.shape == (1, p.n_tokens, p.rank + 2, p.width + 2) and torch.isfinite(out).all()
    assert counter.get_total_flops() == pytest.approx(gen.flops(), rel=0.01)


def test_projection_flops_match_flop_counter():
    """A scaled-down long-prompt preset (projection L→P, then the decoder), counted on CPU."""
    from dataclasses import replace

    p = replace(PRESETS["tiny-random"], name="tiny-projected", prompt_tokens=40, project_to=16)
    p.check()
    gen = Generator(p).eval()
    with torch.no_grad(), flop_counter() as counter:
        out = gen(torch.randn(1, p.n_prompts, 40, p.encoder_dim))
    assert out.shape == (1, 64, 10, 34)
    assert gen.flops() - gen.decoder.flops() == 2 * 4 * 384 * (40 * 16 + 16 * 16)
    assert counter.get_total_flops() == pytest.approx(gen.flops(), rel=0.01)


# --- condition encoder ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    from baselines.dnd.encoder import load_encoder

    return load_encoder("all-MiniLM-L6-v2")


def test_encoder_shape_padding_and_flops(encoder):
    prompts = ["Which gas do plants absorb from the air?", "Pick one.",
               "A ball is dropped from a height of 2 m; how long does it take to land?"]
    with flop_counter() as counter:
        states = encoder.encode(prompts, 16)
    assert states.shape == (3, 16, 384) and states.dtype == torch.float32
    assert encoder.dim == 384 and torch.isfinite(states).all()
    # "Pick one." is 5 tokens with [CLS]/[SEP]: positions 5..15 are padding, kept and not all equal to zero
    n_real = len(encoder.tokenizer(prompts[1])["input_ids"])
    assert n_real < 16 and states[1, n_real:].abs().sum() > 0
    measured, analytic = counter.get_total_flops(), encoder.flops(3, 16)
    assert measured == pytest.approx(analytic, rel=0.03)  # observed 0.987: only the pooler is extra


def test_encoder_chunks_prompts_longer_than_512(encoder):
    long_prompt = "the quick brown fox jumps over the lazy dog " * 80  # ~720 word pieces
    states = encoder.encode([long_prompt, "short"], 600)
    assert states.shape == (2, 600, 384) and torch.isfinite(states).all()  # an all-padding chunk stays finite
    # positions 512..599 are a second, separate 88-token chunk (no [CLS], positions restart at 0)
    ids = encoder.tokenizer([long_prompt], truncation=True, max_length=600, return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 600)
    with torch.no_grad():
        tail = encoder.backbone(input_ids=ids[:, 512:]).last_hidden_state
    torch.testing.assert_close(states[:1, 512:], tail, atol=1e-4, rtol=1e-4)


# --- preset / model fit ----------------------------------------------------------------------------

def test_check_fits_names_preset_and_model():
    tok = LoraTokenizer(lora_shapes(**QWEN_05B, rank=8), 8, 128)
    with pytest.raises(HarnessError) as err:
        get_preset("smollm2-small").check_fits(tok.n_tokens, tok.rank, tok.width, "Qwen2.5-0.5B")
    message = str(err.value)
    assert "smollm2-small" in message and "Qwen2.5-0.5B" in message and "4296" in message and "300" in message
    with pytest.raises(HarnessError, match="qwen2.5-0.5b"):
        get_preset("qwen2.5-0.5b").check_fits(4296, 16, 128, "Qwen2.5-0.5B")  # same count, other rank
    get_preset("qwen2.5-0.5b").check_fits(4296, 8, 128, "Qwen2.5-0.5B")


def test_unknown_preset_lists_known():
    with pytest.raises(HarnessError, match="qwen2.5-0.5b"):
        get_preset("qwen2.5-3b")


# The published configs of the paper's base models (config.json of Qwen/Qwen2.5-*-Instruct on the Hub).
QWEN_CONFIGS = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def _meta_qwen(name):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        return Qwen2ForCausalLM(Qwen2Config(**QWEN_CONFIGS[name]))


@pytest.mark.parametrize("model,rank,alpha,fitting", [
    ("qwen2.5-0.5b", 8, 16, ["qwen2.5-0.5b"]),
    ("qwen2.5-1.5b", 16, 32, ["qwen2.5-1.5b", "qwen2.5-1.5b-code"]),
    ("qwen2.5-7b", 16, 32, ["qwen2.5-7b"]),
])
def test_model_and_dnd_validate_with_the_models_preset(model, rank, alpha, fitting):
    """`model=qwen2.5-1.5b strategy=dnd` (and 7B) used to fail: the library LoRAs were rank 8 for every preset,
    the paper's 1.5B/7B generators emit rank 16. The collect rank is now the preset's (alpha 2 x rank, as the
    paper's r8/a16 and r16/a32), and the preset fits the real model's shapes, built on the meta device."""
    from baselines.dnd.config import DnDSettings, presets_fitting
    from conftest import compose
    from harness.strategy_settings import settings_from

    cfg = compose(f"model={model}", "strategy=dnd")
    preset = get_preset(cfg.model.dnd_preset)
    collect = settings_from(DnDSettings, cfg.strategy).collect.for_preset(preset)
    assert (collect.rank, collect.alpha) == (rank, alpha) == (preset.rank, 2 * preset.rank)
    qwen = _meta_qwen(model)
    assert preset.fits(qwen) and presets_fitting(qwen) == fitting
    tok = LoraTokenizer(shapes_of_model(qwen, collect.rank), collect.rank, preset.width)
    preset.check_fits(tok.n_tokens, tok.rank, tok.width, model)  # no error


def test_a_mismatched_preset_names_the_presets_that_fit():
    qwen = _meta_qwen("qwen2.5-1.5b")
    tok = LoraTokenizer(shapes_of_model(qwen, 8), 8, 128)  # what a rank-8 preset would ask of this model
    with pytest.raises(HarnessError) as err:
        get_preset("qwen2.5-0.5b").check_fits(tok.n_tokens, tok.rank, tok.width, "Qwen2.5-1.5B", model=qwen)
    assert str(err.value).endswith("set strategy.preset to qwen2.5-1.5b or qwen2.5-1.5b-code")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):  # sides of 100 and 300: no preset's width divides them
        odd = Qwen2ForCausalLM(Qwen2Config(hidden_size=100, intermediate_size=300, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, vocab_size=1000))
    with pytest.raises(HarnessError, match="no preset fits this model"):
        get_preset("qwen2.5-0.5b").check_fits(1, 8, 100, "a model no preset fits", model=odd)


def test_an_explicit_collect_rank_that_differs_from_the_preset_is_refused():
    from baselines.dnd.config import DnDSettings
    from conftest import compose
    from harness.strategy_settings import settings_from

    collect = settings_from(DnDSettings, compose("strategy=dnd", "strategy.collect.rank=8").strategy).collect
    assert collect.for_preset(get_preset("smollm2-small")).rank == 8
    with pytest.raises(HarnessError, match=r"collect\.rank=8, but generator preset qwen2\.5-7b emits rank 16"):
        collect.for_preset(get_preset("qwen2.5-7b"))


# --- seen-task reconstruction (diagnostics.reconstruction) ---------------------------------------------

def _library(tmp_path, tasks=("arc", "obqa"), checkpoints=3):
    """Library entries on disk: per task its own A (like per-task seeds) and a B that drifts step to step."""
    from conftest import write_library

    shapes = lora_shapes(**TINY, rank=8)
    trajectories = {}
    for t, task in enumerate(tasks):
        base = _lora_state(shapes, seed=10 * t + 1)
        trajectories[task] = [{k: v + (0.1 * c * torch.ones_like(v) * v.abs().mean() if ".lora_B." in k else 0)
                               for k, v in base.items()} for c in range(checkpoints)]
    return write_library(tmp_path, trajectories)


def test_reconstruction_labels_ok_collapsed_and_underfit(tmp_path):
    from baselines.dnd.diagnostics import flat, mean_state, reconstruction

    entries = _library(tmp_path)
    means = {e.task: mean_state([e.state(p) for p in e.checkpoints]) for e in entries}
    library_mean = mean_state(list(means.values()))
    seen = {e.task: [f"{e.task}: seen {i}" for i in range(4)] for e in entries}
    held = {e.task: [f"{e.task}: held {i}" for i in range(4)] for e in entries}
    task_of = lambda prompts: prompts[0].split(":")[0]  # noqa: E731

    exact = reconstruction(lambda prompts: means[task_of(prompts)], entries, seen, held)
    assert exact["label"] == "ok" and exact["seen_cosine"] == pytest.approx(1.0)
    assert exact["held_back_cosine"] == pytest.approx(1.0) and exact["distinct"] == pytest.approx(1.0)
    assert exact["tasks"]["arc"]["seen"]["rel_l2"] == pytest.approx(0.0, abs=1e-6)

    collapsed = reconstruction(lambda prompts: library_mean, entries, seen, held)
    assert collapsed["label"] == "collapsed" and collapsed["distinct"] == pytest.approx(0.0, abs=1e-6)
    assert collapsed["cosine_to_library_mean"] == pytest.approx(1.0)

    # dW = B A formed explicitly, module by module (the diagnostic never forms it): the library mean's update,
    # ((B1 + B2)/2)((A1 + A2)/2), has cosine about 1/2 with each task's B A when the two A are independent
    def delta(state):
        keys = sorted(k for k in state if ".lora_A." in k)
        return torch.cat([(state[k.replace(".lora_A.", ".lora_B.")].double() @ state[k].double()).flatten()
                          for k in keys])

    half = torch.nn.functional.cosine_similarity(delta(library_mean), delta(means["arc"]), dim=0).item()
    assert collapsed["tasks"]["arc"]["seen"]["cosine"] == pytest.approx(half, rel=1e-9) and 0.35 < half < 0.65
    a, b = flat(means["arc"]), flat(means["obqa"])
    assert abs(torch.nn.functional.cosine_similarity(a, b, dim=0).item()) < 0.1
    exact_l2 = (delta(noise_like := means["obqa"]) - delta(means["arc"])).norm() / delta(means["arc"]).norm()
    crossed = reconstruction(lambda prompts: noise_like, entries, seen, held)  # obqa's LoRA for every task
    assert crossed["tasks"]["arc"]["seen"]["rel_l2"] == pytest.approx(exact_l2.item(), rel=1e-9)
    assert crossed["tasks"]["obqa"]["seen"]["cosine"] == pytest.approx(1.0) and crossed["label"] == "underfit"

    g = torch.Generator().manual_seed(5)
    noise = {k: torch.randn(v.shape, generator=g) * v.std() for k, v in library_mean.items()}
    underfit = reconstruction(lambda prompts: noise, entries, seen, held)  # one output, far from every task
    assert underfit["label"] == "underfit" and abs(underfit["seen_cosine"]) < 0.1


# --- each preset's recipe (configs/dnd_recipe/) --------------------------------------------------------

BRIEF = Path(__file__).resolve().parents[2] / "shared" / "research" / "dnd.md"
PAPER_PRESETS = {"qwen2.5-0.5b": ("Common-sense", "Common-sense", "2048"),
                 "qwen2.5-1.5b": ("Math 1.5B", "Math 1.5B", "4400"),
                 "qwen2.5-1.5b-code": ("Coding 1.5B", "Coding 1.5B", "4096"),
                 "qwen2.5-7b": ("Math 7B / Coding 7B", "Math 7B", "4400")}


def _brief_recipes() -> dict:
    """The official meta-train batch and steps (the newest config the brief lists: [code-new] where it gives one,
    else [code]), checkpoints per dataset, rates, collect batch and cutoff lengths, read from research/dnd.md."""
    import re

    text = BRIEF.read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[4].isdigit():  # | generator | batch | steps [code] | steps [code-new] | GPUs |
            batch, steps = int(cells[1]), cells[2]
            newer = cells[3]
            if newer != "—":
                steps = newer
                match = re.match(r"(\d+) batch / (\d+) steps", newer)
                if match:
                    batch, steps = int(match.group(1)), match.group(2)
            steps = int(re.search(r"(\d+)", steps.replace("mostly ", "")).group(1))
            rows[cells[0]] = {"batch": batch, "steps": steps}
        elif len(cells) == 2 and cells[1].split(" ")[0].isdigit() and not cells[0].startswith("task"):
            for name in cells[0].split(", "):  # | task | checkpoints per dataset |
                rows.setdefault("checkpoints", {})[name] = int(cells[1].split(" ")[0])
    rows["meta_lr"] = float(re.search(r"lr \*\*([0-9.e-]+)\*\*", text).group(1))
    common = re.search(r"Common optimizer settings:\*\* lr ([0-9.e-]+)", text)
    rows["collect_lr"] = float(common.group(1))
    per_device, accumulate = re.search(r"per-device (\d+) × grad-accum (\d+)", text).groups()
    rows["collect_batch"] = int(per_device) * int(accumulate)
    rows["cutoff"] = re.search(r"`cutoff_len`: ([^\n]+)", text).group(1)
    return rows


@pytest.mark.skipif(not BRIEF.is_file(), reason="../shared/research/dnd.md not found")
@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_paper_presets_carry_the_papers_recipe(name):
    from baselines.dnd.config import DnDSettings
    from conftest import compose
    from harness.strategy_settings import settings_from

    brief = _brief_recipes()
    meta_row, checkpoint_row, cutoff = PAPER_PRESETS[name]
    preset = get_preset(name)
    s = settings_from(DnDSettings, compose("strategy=dnd").strategy)
    meta, collect = s.meta_train.for_preset(preset), s.collect.for_preset(preset)
    assert (meta.batch_size, meta.steps) == (brief[meta_row]["batch"], brief[meta_row]["steps"])
    assert meta.lr == brief["meta_lr"] == 3e-5
    assert collect.checkpoints == brief["checkpoints"][checkpoint_row]
    assert collect.lr == brief["collect_lr"] == 1e-4 and collect.batch_size == brief["collect_batch"] == 8
    assert cutoff == str(collect.max_length) and cutoff in brief["cutoff"].replace("/", " ").split(" ")
    assert collect.steps > collect.checkpoints  # trained to a useful point before the saved trajectory
    assert (collect.rank, collect.alpha) == (preset.rank, 2 * preset.rank)


def test_the_brief_parser_reads_what_the_brief_says():
    """Independent hand-read values of research/dnd.md §2.1 and §3, so the parser above cannot drift silently."""
    if not BRIEF.is_file():
        pytest.skip("../shared/research/dnd.md not found")
    brief = _brief_recipes()
    assert brief["Common-sense"] == {"batch": 64, "steps": 5010} and brief["Math 1.5B"] == {"batch": 128, "steps": 5010}
    assert brief["Coding 1.5B"] == {"batch": 128, "steps": 5010}
    assert brief["Math 7B / Coding 7B"] == {"batch": 48, "steps": 5000}
    assert brief["checkpoints"]["Common-sense"] == 50 and brief["checkpoints"]["Math 7B"] == 80


def test_every_preset_has_a_recipe_and_command_line_values_override_it():
    from baselines.dnd.config import PRESETS, DnDSettings
    from baselines.dnd.library import RECIPE_DIR, recipe
    from conftest import compose
    from harness.strategy_settings import settings_from

    assert sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")) == sorted(PRESETS)
    for name in PRESETS:
        recipe(name)  # every recipe sets exactly the recipe keys
    s = settings_from(DnDSettings, compose("strategy=dnd", "strategy.meta_train.steps=7",
                                           "strategy.collect.lr=0.5").strategy)
    meta = s.meta_train.for_preset(get_preset("qwen2.5-0.5b"))
    collect = s.collect.for_preset(get_preset("qwen2.5-0.5b"))
    assert (meta.steps, meta.batch_size, collect.lr, collect.checkpoints) == (7, 64, 0.5, 50)
    with pytest.raises(HarnessError, match="has no recipe"):
        recipe("no-such-preset")


def test_seen_task_accuracy_counts_the_gain_of_library_loras_that_beat_base_only():
    """Hand-computed on 4 items: arc's library LoRA gains 1.0 - 0.25 = 0.75 and its generated LoRA 0.5 - 0.25;
    obqa's gains too; piqa's library LoRA does not beat base, so its (negative) gain is left out of the ratio."""
    from baselines.dnd.generator import seen_task_accuracy
    from baselines.dnd.library import LibraryEntry
    from harness.costs import PhaseCost

    def entry(task, base, lora, beats):
        own = {"n": 4, "base": base, "lora": lora, "beats_base": beats}
        return LibraryEntry(task, task, Path("."), [], Path("."), PhaseCost(phase="collect"), {"own_task": own})

    entries = [entry("arc", 0.25, 1.0, True), entry("obqa", 0.0, 0.5, True), entry("piqa", 0.75, 0.25, False)]
    scores = {"arc": {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0},  # 0.5: gains 0.25 of the library's 0.75
              "obqa": {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0},  # 0.5: all of the library's 0.5
              "piqa": {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}}
    means = {"arc": {0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0}, "obqa": {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0},
             "piqa": {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0}}  # the library mean's scores: 0.25, 0, 0.75
    out = seen_task_accuracy(scores, entries, means)
    assert out["accuracy"]["arc"] == {"generated": 0.5, "n": 4, "library_mean": 0.25, "library_lora": 1.0,
                                      "base": 0.25, "library_beats_base": True}
    assert out["accuracy"]["piqa"]["library_mean"] == 0.75 and out["accuracy"]["obqa"]["library_mean"] == 0.0
    assert out["gain_recovered"] == pytest.approx((0.25 + 0.5) / (0.75 + 0.5))  # 0.6
    assert out["gain_recovered_over"] == ["arc", "obqa"]
    assert seen_task_accuracy({"piqa": scores["piqa"]}, entries[2:])["gain_recovered"] is None


def test_an_edited_recipe_makes_new_cells(tmp_path, monkeypatch):
    """A recipe fills the cell's null settings from outside its config, so its content keys the cell (the
    strategy's fingerprint, part of every cell key): an edited recipe is a new cell, for DnD and its controls,
    never a finished cell skipped for settings it did not run with."""
    import shutil

    import baselines.dnd.library as library
    from conftest import compose
    from harness.strategy import get_strategy

    cfg = compose("model=tiny-random", "strategy=dnd").strategy
    original = get_strategy("dnd").fingerprint(cfg)
    copy = tmp_path / "dnd_recipe"
    shutil.copytree(library.RECIPE_DIR, copy)
    monkeypatch.setattr(library, "RECIPE_DIR", copy)
    assert get_strategy("dnd").fingerprint(cfg) == original  # same files, same digest
    path = copy / "tiny-random.yaml"
    path.write_text(path.read_text().replace("steps: 200", "steps: 201"))
    assert library.recipe("tiny-random")["meta_train"]["steps"] == 201
    edited = get_strategy("dnd").fingerprint(cfg)
    assert edited != original
    assert get_strategy("dnd_control").fingerprint(compose("strategy=dnd_mean").strategy) == edited
