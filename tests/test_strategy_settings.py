"""Strategy settings: typed, built from the Hydra node by one builder, with the YAML as the only source of values."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from conftest import compose, needs_data
from harness.errors import HarnessError
from harness.strategy_settings import settings_from

ROOT = Path(__file__).resolve().parents[1]
STRATEGY_YAML = ROOT / "configs" / "strategy"


def _types():
    from baselines.adapter import AdapterSettings
    from baselines.dnd.config import DnDSettings, LibraryControlSettings, MetaTrainSettings
    from baselines.dnd.library import CollectSettings
    from baselines.icl import InContextSettings
    from baselines.icl_aug_ft import AugmentSettings, IclAugSettings
    from baselines.lora import LoraTuningSettings
    from baselines.t2l.arrow import ArrowSettings
    from baselines.t2l.config import HypernetSettings, T2LSettings
    from baselines.t2l.multitask import MultitaskSettings
    from harness.trainer import LoraSettings

    by_impl = {"lora": LoraTuningSettings, "icl": InContextSettings, "adapter": AdapterSettings,
               "dnd": DnDSettings, "dnd_control": LibraryControlSettings, "t2l": T2LSettings,
               "multitask_lora": MultitaskSettings, "arrow": ArrowSettings, "icl_aug_ft": IclAugSettings}
    return by_impl, [*by_impl.values(), AugmentSettings, MetaTrainSettings, CollectSettings, LoraSettings,
                     HypernetSettings]


def _one_line_error(overrides, match):
    cfg = compose(*overrides).strategy
    by_impl, _ = _types()
    with pytest.raises(HarnessError, match=match) as err:
        settings_from(by_impl[cfg.impl], cfg)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("name", sorted(p.stem for p in STRATEGY_YAML.glob("*.yaml")))
def test_every_strategy_config_builds_its_settings(name):
    cfg = compose(f"strategy={name}").strategy
    by_impl, _ = _types()
    if cfg.impl == "base":
        assert set(cfg) == {"name", "impl"}  # nothing to configure
        return
    settings = settings_from(by_impl[cfg.impl], cfg)
    assert {f.name for f in dataclasses.fields(settings)} >= set(cfg) - {"name", "impl"}


def test_settings_declare_no_default_the_yaml_would_compete_with():
    # The one default: a control's `member`, which only dnd_member.yaml sets (to the same null); writing it into
    # dnd_mean/dnd_nearest.yaml would change their resolved configs, hence their cell keys.
    _, types = _types()
    defaults = {(cls.__name__, f.name, f.default) for cls in types for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    assert defaults == {("LibraryControlSettings", "member", None)}


def test_the_values_that_run_are_the_yamls():
    from baselines.dnd.config import DnDSettings, get_preset

    raw = yaml.safe_load((STRATEGY_YAML / "dnd.yaml").read_text())
    raw.update(yaml.safe_load((ROOT / "configs" / "library" / "commonsense.yaml").read_text()))  # its library
    small = yaml.safe_load((STRATEGY_YAML / "dnd_default.yaml").read_text())
    recipe = yaml.safe_load((ROOT / "configs" / "dnd_recipe" / "smollm2-small.yaml").read_text())
    s = settings_from(DnDSettings, compose("strategy=dnd_default").strategy)
    # dnd.yaml leaves the recipe's keys null; dnd_default.yaml sets some, the model's preset's recipe the rest
    assert raw["meta_train"]["lr"] is None and raw["collect"]["steps"] is None and s.preset is None
    preset = get_preset(compose("model=smollm2-135m").model.dnd_preset)
    meta, collect = s.meta_train.for_preset(preset), s.collect.for_preset(preset)
    assert preset.name == "smollm2-small" and meta.lr == 1e-3 == recipe["meta_train"]["lr"]
    assert meta.steps == small["meta_train"]["steps"] == 200 and meta.batch_size == recipe["meta_train"]["batch_size"]
    assert (collect.steps, collect.checkpoints) == (small["collect"]["steps"], small["collect"]["checkpoints"])
    assert (collect.steps, collect.checkpoints) == (60, 20)
    assert collect.lr == recipe["collect"]["lr"] == 1e-3 and collect.batch_size == 4 and collect.max_length == 256
    assert s.bank == 128 and s.library == ["arc_challenge", "openbookqa"]
    assert s.collect.rank is None and s.collect.alpha is None and s.collect.targets is None  # the preset's, resolved:
    assert (collect.rank, collect.alpha, collect.targets) == (8, 16, ["q_proj", "v_proj"])
    assert s.encoder == raw["encoder"] and s.meta_train.seed == 999 and collect.init == "shared"
    lora = settings_from(_types()[0]["lora"], compose("strategy=lora_fewshot").strategy)
    assert lora.shots == 16 and lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj")
    assert lora.lr == 1e-4 and lora.warmup_frac == 0.03 and lora.max_steps is None and lora.epochs is None
    trainer = collect.lora()  # the library LoRAs train on the preset's projections, with lora.yaml's warm-up
    assert (trainer.target_modules, trainer.alpha, trainer.warmup_frac) == (("q_proj", "v_proj"), 16, 0.03)
    assert (trainer.checkpoint_every, trainer.checkpoint_start, trainer.schedule) == (1, 60 - 20 + 1, "constant")


@pytest.mark.parametrize("overrides,match", [
    (["strategy=lora", "+strategy.rnak=4"], r"^strategy\.rnak is not a setting of strategy .*fix its spelling$"),
    (["strategy=dnd", "+strategy.meta_train.lrr=1"], r"^strategy\.meta_train\.lrr is not a setting of "),
    (["strategy=dnd_mean", "+strategy.collect.step=3"], r"^strategy\.collect\.step is not a setting"),
    (["strategy=lora", "strategy.target_modules=5"], r"^strategy\.target_modules must be a list \(got 5\)"),
    (["strategy=lora", "strategy.target_modules=[q_proj,7]"], r"^strategy\.target_modules\[1\] must be a name"),
    (["strategy=dnd", "strategy.collect.steps=abc"], r"^strategy\.collect\.steps must be an integer \(got 'abc'\)"),
    (["strategy=dnd", "strategy.collect=3"], r"^strategy\.collect must be a group of settings"),
    (["strategy=dnd", "strategy.encoder=null"], r"^strategy\.encoder must be set \(got null\)"),
    (["strategy=dnd", "strategy.meta_train.lr=0"], r"^strategy\.meta_train\.lr must be > 0"),
    (["strategy=dnd", "strategy.collect.steps=10", "strategy.collect.checkpoints=99"],
     r"^strategy\.collect\.checkpoints must be in 1\.\.collect"),
    (["strategy=dnd_member", "strategy.member=-1"], r"^strategy\.member must be >= 0"),
    (["strategy=dnd_mean", "strategy.mode=median"], r"^strategy\.mode must be member, mean or nearest"),
    (["strategy=icl", "strategy.shots=2.5"], r"^strategy\.shots must be an integer \(got 2\.5\)"),
    (["strategy=lora", "strategy.epochs=0"], r"^strategy\.epochs .* must be > 0"),
])
def test_a_bad_setting_is_one_line_naming_the_key(overrides, match):
    _one_line_error(overrides, match)


def test_a_missing_setting_names_the_key_and_where_to_add_it():
    from baselines.dnd.config import MetaTrainSettings

    node = dict(compose("strategy=dnd").strategy.meta_train)
    del node["grad_clip"]
    with pytest.raises(HarnessError, match=r"^strategy\.meta_train\.grad_clip is missing: add it to the strategy's "
                                           r"YAML in configs/strategy/"):
        settings_from(MetaTrainSettings, node, "strategy.meta_train")


def test_values_are_typed_once():
    s = settings_from(_types()[0]["lora"], compose("strategy=lora", "strategy.rank=4.0", "strategy.lr=3e-4",
                                                   "strategy.max_steps=7").strategy)
    assert s.rank == 4 and type(s.rank) is int and s.lr == 3e-4 and s.max_steps == 7
    assert isinstance(s.target_modules, tuple)  # a ListConfig in, a tuple out


def test_a_misspelt_setting_stops_the_run_before_any_compute(capsys, tmp_path, monkeypatch):
    from harness.cli import main

    runs = tmp_path / "runs"
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(runs))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "model=tiny-random", "task=arc_easy", "strategy=lora", "+strategy.lr_rate=1e-3"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert exit_.value.code == 2 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("error: strategy.lr_rate is not a setting of strategy (known: rank, alpha")
    assert not runs.exists() or not any(runs.rglob("*"))


@needs_data
def test_serving_an_unmerged_lora_costs_its_peft_weights(tiny):
    """One formula for every strategy that serves a LoRA (lora, DnD and its controls): 2 FLOPs per adapter weight
    and token, the weights counted as peft creates them."""
    from peft import LoraConfig, get_peft_model

    from harness.flops import ModelShape
    from harness.pricing import QueryPricer, lora_serving
    from harness.tasks import TaskHandle
    from test_trainer import lora_yaml

    task = TaskHandle.from_cfg(compose("task=arc_easy").task)
    pricing = QueryPricer(task, tiny.tokenizer, ModelShape.of(tiny.model), n_docs=4)
    settings = lora_yaml()
    per_query, n_lora = lora_serving(pricing, tiny.model, settings)
    copy = get_peft_model(type(tiny.model)(tiny.model.config),  # a fresh copy: the shared model stays unwrapped
                          LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                                     target_modules=list(settings.target_modules), task_type="CAUSAL_LM"))
    assert n_lora == sum(p.numel() for n, p in copy.named_parameters() if "lora_" in n) > 0
    assert per_query == pricing.extra(lora_params=n_lora) > 0
    half, n_half = lora_serving(pricing, tiny.model, dataclasses.replace(settings, rank=settings.rank // 2))
    assert n_half * 2 == n_lora and half * 2 == pytest.approx(per_query)
