"""Text-to-LoRA (baselines/t2l) units, checked against numbers: the hypernetwork's sizes and FLOPs against the
brief's counts from the official code, its three output layouts, Bias-HyperInit against peft's own init, the
presets against the real models' shapes, and the descriptions."""
from __future__ import annotations

import pytest
import torch

from baselines.t2l.config import PRESETS, get_preset, presets_fitting, shape_of_model
from baselines.t2l.model import HyperModulator, LoraShape
from harness.errors import HarnessError
from harness.flops import flop_counter


def _net(name, variant, emb=1024, bias=False):
    p = PRESETS[name]
    with torch.device("meta"):
        return HyperModulator(p.shape, emb, variant, p.latent, p.head_in, head_bias=bias)


# ../shared/research/t2l-and-icl-augmented-ft.md A.2: parameter counts computed from the official code with a
# gte-large input (1024), q and v heads, Mistral shapes (55.3 M / 34.3 M / 5.0 M; 55.4 M with head biases), and
# the FLOPs of generating one adapter (3.6 / 4.5 / 5.3 GFLOPs).
@pytest.mark.parametrize("variant,millions,gflops", [("L", 55.3, 3.6), ("M", 34.3, 4.5), ("S", 5.0, 5.3)])
def test_mistral_sizes_match_the_official_code(variant, millions, gflops):
    net = _net("mistral-7b", variant)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == millions
    assert abs(net.flops() / 1e9 - gflops) < 0.06  # the brief rounds to 0.1 GFLOP


def test_head_biases_add_the_lora_size_for_l():
    assert round(sum(p.numel() for p in _net("mistral-7b", "L", bias=True).parameters()) / 1e6, 1) == 55.4
    # one rank-8 q/v LoRA of Mistral: 3.41 M weights (A.2's last row); Gemma-2-2B 1.60 M
    assert round(PRESETS["mistral-7b"].shape.lora_params / 1e6, 2) == 3.41
    assert round(PRESETS["gemma-2-2b"].shape.lora_params / 1e6, 2) == 1.60


@pytest.mark.parametrize("variant", ["L", "M", "S"])
def test_output_shapes_and_flops_against_torch_counter(variant):
    shape = LoraShape(3, 4, (("q_proj", 16, 16), ("v_proj", 16, 8), ("up_proj", 16, 40)))
    torch.manual_seed(0)
    net = HyperModulator(shape, 12, variant, latent=16, head_in=24).eval()
    emb = torch.randn(5, 12)
    out = net(emb)
    assert list(out) == ["q_proj", "v_proj", "up_proj"]
    for module, n_in, n_out in shape.modules:
        a, b = out[module]
        assert a.shape == (5, 3, 4, n_in) and b.shape == (5, 3, n_out, 4)
    with flop_counter() as counter:
        net(emb[:1])
    assert counter.get_total_flops() == net.flops(1)
    # different descriptions give different LoRAs; one description gives the same LoRA in every batch position
    assert not torch.allclose(out["q_proj"][0][0], out["q_proj"][0][1])
    again = net(emb[:1].expand(2, -1))
    # (to float32 rounding: batch positions may take different BLAS kernels on some CPUs)
    assert torch.allclose(again["v_proj"][1][0], again["v_proj"][1][1], atol=1e-6)


def test_bias_hyperinit_gives_peft_init_at_step_zero(fresh_tiny):
    """L with zero head weights and biases from peft's initial LoRA: every layer's A is peft's initial A (of the first
    layer, as the official code takes it) and B is exactly 0, so the adapted model equals the base model."""
    from peft import LoraConfig, get_peft_model

    from baselines.t2l.hypernet import _peft_names, join_state

    model = fresh_tiny.model
    shape = shape_of_model(model, 8, ["q_proj", "v_proj"])
    torch.manual_seed(3)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0))
    params = dict(peft_model.named_parameters())
    names = _peft_names(peft_model, shape)
    init = {m: params[names[(m, 0, "A")]].detach().clone() for m in shape.names}
    ids = torch.tensor([[5, 17, 300, 42]])
    with torch.no_grad():
        base_logits = peft_model.get_base_model()(input_ids=ids).logits
    for variant in ("L", "M", "S"):
        net = HyperModulator(shape, 384, variant, 32, 64, head_bias=True)
        net.init_from_lora(init)
        out = net(torch.randn(2, 384))
        for m in shape.names:
            a, b = out[m]
            if variant == "L":
                assert torch.equal(a, init[m].expand_as(a)) and not b.any()
            elif variant == "M":  # the official shared bias: A / sqrt 2, and B reads the same bias
                assert torch.allclose(a, (init[m] / 2 ** 0.5).expand_as(a))
            else:  # S: every rank row is A's first row / sqrt(2 r)
                assert torch.allclose(a, (init[m][0] / (2 * 8) ** 0.5).expand_as(a))
        if variant == "L":
            state = join_state({m: (out[m][0][0], out[m][1][0]) for m in shape.names},
                               [n.replace(".default", "") for n in names.values()])
            assert len(state) == 2 * 2 * 2 and all(".default" not in k for k in state)
            with torch.no_grad():
                from torch.func import functional_call

                logits = functional_call(peft_model, {names[(m, layer, s)]: out[m][0 if s == "A" else 1][0, layer]
                                                      for m in shape.names for layer in range(2) for s in "AB"},
                                         args=(), kwargs={"input_ids": ids}, strict=False).logits
            assert torch.allclose(logits, base_logits, atol=1e-6)
    peft_model.unload()


# The published configs of the base models (config.json on the Hub), built on the meta device.
META_MODELS = {
    "mistral-7b": ("MistralConfig", "MistralForCausalLM", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=32000)),
    "gemma-2-2b": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
        head_dim=256, vocab_size=256000)),
    "qwen2.5-0.5b": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        vocab_size=151936)),
    "qwen2.5-7b": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064)),
}


@pytest.mark.parametrize("name,rank,targets", [
    ("mistral-7b", 8, ["q_proj", "v_proj"]), ("gemma-2-2b", 8, ["q_proj", "v_proj"]),
    ("qwen2.5-0.5b", 8, None), ("qwen2.5-7b", 16, None)])
def test_presets_fit_the_real_models(name, rank, targets):
    import transformers

    config_cls, model_cls, kwargs = META_MODELS[name]
    with torch.device("meta"):
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))
    from baselines.t2l.config import ALL

    shape = shape_of_model(model, rank, targets or ALL)
    assert shape == get_preset(name).shape
    assert name in presets_fitting(shape)
    get_preset(name).check_fits(shape, name, presets_fitting(shape))


def test_smollm2_and_tiny_presets_fit_and_a_mismatch_names_the_fitting_preset(tiny):
    shape = shape_of_model(tiny.model, 8, ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj",
                                           "down_proj"])
    assert shape == get_preset("tiny-random").shape
    with pytest.raises(HarnessError) as err:
        get_preset("smollm2").check_fits(shape, "tiny-random", presets_fitting(shape))
    assert str(err.value).endswith("set strategy.hypernet.preset to tiny-random")
    with pytest.raises(HarnessError, match="unknown T2L preset 'gpt-5'; known: mistral-7b"):
        get_preset("gpt-5")


def test_every_task_has_twelve_descriptions_split_nine_and_three():
    from baselines.t2l import descriptions as desc

    for path in sorted(desc.FOLDER.glob("*.yaml")):
        d = desc.load(path.stem)
        assert len(d.train) >= 9 and len(d.eval) == 3, path
        assert not set(d.train) & set(d.eval)
    names = {p.stem for p in desc.FOLDER.glob("*.yaml")}
    assert {"arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande", "gsm8k", "math",
            "humaneval", "mbpp", "livecodebench"} <= names
    all_eval = [t for n in names for t in desc.load(n).eval]
    assert len(set(all_eval)) == len(all_eval) - 3  # mbpp_sanitized repeats mbpp's descriptions, nothing else repeats


@pytest.mark.parametrize("text,message", [
    ("train: []\neval: [a task]\n", "has no train descriptions"),
    ("train: [Answer it.]\neval: [Answer it.]\n", "under both train and eval"),
])
def test_bad_description_files_are_one_line_errors(tmp_path, monkeypatch, text, message):
    from baselines.t2l import descriptions as desc

    monkeypatch.setattr(desc, "FOLDER", tmp_path)
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(HarnessError, match=message):
        desc.load("x")
    with pytest.raises(HarnessError, match="task y has no descriptions"):
        desc.load("y")


def test_controls_are_other_tasks_or_random_strings():
    from baselines.t2l import descriptions as desc

    aligned = [desc.for_target("piqa", "aligned", s, ["boolq"])[0] for s in range(3)]
    assert aligned == list(desc.load("piqa").eval)
    text, source = desc.for_target("piqa", "unaligned", 0, ["boolq", "winogrande"])
    other = source.split()[1]
    assert other in ("boolq", "winogrande") and text in desc.load(other).eval
    rand, source = desc.for_target("piqa", "random", 4, [])
    assert rand == desc.random_strings(1, 4)[0] and rand.isalpha() and rand.islower() and len(rand) == 24
    assert desc.for_target("piqa", "aligned", 0, [], custom=" Pick a solution. ") == ("Pick a solution.", "custom")
    assert desc.add_full_stop("Answer it") == "Answer it." and desc.add_full_stop("Why?") == "Why?"
