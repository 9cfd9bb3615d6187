"""Every config composes, and every group option is a valid choice (torchtune-style config test)."""
import pytest

from conftest import compose
from harness.cli import GROUPS, options


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group):
    names = options(group)
    assert names, group
    for name in names:
        cfg = compose(f"{group}={name}")
        if group == "experiment":
            continue
        assert cfg[group].name == name


def test_budgets_and_strategies_are_well_formed():
    from harness.budget import Budget
    from harness.strategy import get_strategy

    for name in options("budget"):
        Budget.from_cfg(compose(f"budget={name}").budget)
    for name in options("strategy"):
        cfg = compose(f"strategy={name}").strategy
        strategy = get_strategy(cfg.impl)
        if name != "adapter":
            strategy.validate(cfg)


def test_default_experiment_is_a_matched_sweep():
    cfg = compose("experiment=default")
    assert cfg.eval.limit == 200 and cfg.budget.kind == "flops"
    import yaml

    from harness.settings import CONFIG_DIR

    sweeps = {name: yaml.safe_load((CONFIG_DIR / "experiment" / f"{name}.yaml").read_text())["hydra"]["sweeper"]
              for name in ("default", "default_dnd")}
    assert sweeps["default"]["params"]["strategy"] == "base,icl,lora_fewshot,lora"
    assert sweeps["default_dnd"]["params"]["strategy"] == "base,icl,lora_fewshot,lora,dnd_default"
    assert compose("experiment=default_dnd").eval.limit == 200
