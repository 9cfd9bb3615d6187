"""The frame strategies are built on: the core imports no strategy, strategies register through the
`harness.strategies` entry points only, and a hook that is misspelled fails registration instead of
being silently never called."""
import ast
import re
import sys
import tomllib

import pytest

from conftest import ROOT, compose

BUILT_IN = {"base": "baselines.base:Base", "icl": "baselines.icl:InContext", "lora": "baselines.lora:LoraTuning",
            "adapter": "baselines.adapter:ExistingAdapter", "dnd": "baselines.dnd.strategy:DragAndDrop",
            "dnd_control": "baselines.dnd.controls:LibraryControl", "t2l": "baselines.t2l.strategy:TextToLoRA",
            "multitask_lora": "baselines.t2l.multitask:MultitaskLora", "arrow": "baselines.t2l.arrow:ArrowRouting",
            "icl_aug_ft": "baselines.icl_aug_ft:IclAugmentedFineTuning"}


def imports_of(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`: top level, inside functions, and importlib/__import__ calls."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.append((node.lineno, node.module or ""))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names if not node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
    return out


def test_the_import_check_sees_every_kind_of_import():
    source = ("import os\nfrom baselines.dnd import config\n\ndef f():\n    import baselines  # noqa\n"
              "    from baselines import icl\n    importlib.import_module('baselines.lora')\n"
              "    __import__('baselines')\n")
    assert [m for _, m in imports_of(source) if m.split(".")[0] == "baselines"] == \
        ["baselines.dnd", "baselines", "baselines", "baselines.lora", "baselines"]


def test_no_module_under_harness_imports_baselines():
    """The core knows no strategy: they come to it through the entry points (harness/strategy.py)."""
    files = sorted((ROOT / "harness").rglob("*.py"))
    assert len(files) > 20
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in files
                 for line, module in imports_of(path.read_text()) if module.split(".")[0] == "baselines"]
    assert offenders == []


def test_every_built_in_strategy_registers_through_its_entry_point():
    from harness.strategy import Strategy, strategies

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["harness.strategies"]
    assert declared == BUILT_IN
    impls = {str(compose(f"strategy={p.stem}").strategy.impl) for p in (ROOT / "configs" / "strategy").glob("*.yaml")}
    assert impls == set(BUILT_IN)  # every config names a registered implementation, and none is unused
    loaded = strategies()
    assert {name: f"{cls.__module__}:{cls.__name__}" for name, cls in loaded.items()} == BUILT_IN, \
        "the installed metadata is stale: reinstall (make setup)"
    assert all(issubclass(cls, Strategy) for cls in loaded.values())
    # importing the package registers nothing by side effect: the entry points are the only way in
    assert "register_strategy" not in (ROOT / "harness" / "strategy.py").read_text()
    assert imports_of((ROOT / "baselines" / "__init__.py").read_text()) == []


def test_strategies_contribute_report_and_list_pages_through_the_registry():
    from baselines.dnd.config import print_presets
    from baselines.t2l.config import print_presets as print_t2l_presets
    from harness.strategy import get_strategy, list_pages, report_pages

    # dnd's pages are offered by every strategy on its library (dnd, dnd_control, multitask_lora, arrow): once
    assert list(report_pages()) == ["dnd_loo.md", "dnd_library.md", "dnd_speedup.md", "icl_vs_ft.md",
                                    "t2l_loo.md"]
    assert list_pages() == {"dnd-presets": print_presets, "t2l-presets": print_t2l_presets}
    base = get_strategy("base")  # the defaults: no check, no extra input, no one-off phase, no page
    cfg = compose("strategy=base")
    assert (base.validate_cell(cfg), base.fingerprint(cfg.strategy), base.reads_tasks(cfg)) == (None, None, [])
    assert (base.one_off_phases(cfg.strategy), base.report_pages(), base.list_pages()) == ((), [], {})
    assert not base.uses_seed(cfg.strategy) and get_strategy("lora").uses_seed(cfg.strategy)
    assert get_strategy("dnd").one_off_phases(cfg.strategy) == ("collect", "meta_train")
    assert get_strategy("dnd_control").one_off_phases(cfg.strategy) == ("collect",)
    assert get_strategy("t2l").one_off_phases(cfg.strategy) == ("collect", "meta_train")
    assert get_strategy("multitask_lora").one_off_phases(cfg.strategy) == get_strategy("arrow").one_off_phases(
        cfg.strategy) == ("collect",)


@pytest.mark.parametrize("typo, hook", [("validate_cel", "validate_cell"), ("use_seed", "uses_seed"),
                                        ("finger_print", "fingerprint"), ("read_tasks", "reads_tasks"),
                                        ("report_page", "report_pages"), ("adopt", "adapt")])
def test_a_misspelled_hook_fails_registration(typo, hook):
    from harness.errors import HarnessError
    from harness.strategy import STRATEGIES, Strategy, register

    def adapt(self, ctx):
        return None

    cls = type("Typo", (Strategy,), {"adapt": adapt, typo: lambda self, *a: False})
    with pytest.raises(HarnessError, match=rf"^strategy 'typo': Typo\.{typo} is not a strategy hook, and would "
                                           rf"never be called: did you mean {hook}\?"):
        register("typo", cls)
    sub = type("Sub", (cls,), {})  # inherited from a helper class: still caught
    with pytest.raises(HarnessError, match=rf"Typo\.{typo} .* did you mean {hook}\?"):
        register("typo", sub)
    mixin = type("Mixin", (), {typo: lambda self, *a: False})  # a helper class of the same package
    with pytest.raises(HarnessError, match=rf"Mixin\.{typo} .* did you mean {hook}\?"):
        # (a class statement sets __module__; type() through Strategy's ABCMeta would record "abc")
        register("typo", type("Mixed", (mixin, Strategy), {"adapt": adapt, "__module__": __name__}))
    assert "typo" not in STRATEGIES


def test_registration_refuses_what_is_not_a_strategy():
    from harness.errors import HarnessError
    from harness.strategy import STRATEGIES, Strategy, register

    class Plain:
        def adapt(self, ctx):
            return None

    with pytest.raises(HarnessError, match="is not a subclass of harness.strategy.Strategy: derive it"):
        register("plain", Plain)
    with pytest.raises(HarnessError, match="defines no adapt method"):
        register("plain", type("NoAdapt", (Strategy,), {"_helper": lambda self: 0, "prepare": lambda self: 0}))
    assert "plain" not in STRATEGIES


def test_a_shared_one_off_phase_must_be_declared():
    from harness.costs import PhaseCost
    from harness.strategy import Adaptation, check_one_off, get_strategy

    cfg = compose("strategy=dnd_default").strategy
    shared = Adaptation(kind="adapter", costs=[PhaseCost(phase="collect", shared_by=2),
                                               PhaseCost(phase="meta_train", shared_by=1), PhaseCost(phase="generate")])
    check_one_off(get_strategy("dnd"), cfg, shared)
    with pytest.raises(TypeError, match=r"charges shared one-off phases \['meta_train'\] that its one_off_phases"):
        check_one_off(get_strategy("dnd_control"), cfg, shared)


THIRD_PARTY = '''
from harness.errors import HarnessError
from harness.strategy import Adaptation, Strategy


class Refuses(Strategy):
    def validate_cell(self, cfg):
        raise HarnessError(f"third party: {cfg.task.name} is not for me: pick another task")

    def adapt(self, ctx):
        return Adaptation(kind="none")
'''


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A package installed beside the harness (its dist-info on sys.path), with a fresh registry."""
    from harness import strategy

    def install(module: str, entries: dict[str, str]) -> None:
        (tmp_path / f"{module}.py").write_text(THIRD_PARTY)
        info = tmp_path / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[harness.strategies]\n" +
                                               "".join(f"{k} = {v}\n" for k, v in entries.items()))
        monkeypatch.syspath_prepend(str(tmp_path))

    monkeypatch.setattr(strategy, "STRATEGIES", {})
    monkeypatch.setattr(strategy, "_LOADED", False)
    yield install
    sys.modules.pop("third_party_strategy", None)


def test_a_third_party_package_registers_by_installing_and_its_hooks_run(installed, capsys, tmp_path, monkeypatch):
    from harness.cli import main
    from harness.strategy import strategies

    installed("third_party_strategy", {"refuses": "third_party_strategy:Refuses"})
    assert set(strategies()) == set(BUILT_IN) | {"refuses"}
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "model=tiny-random", "task=arc_easy", "strategy=base", "strategy.impl=refuses",
              f"runs_dir={tmp_path / 'runs'}"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: third party: arc_easy is not for me: pick another task"


def test_an_entry_point_that_cannot_be_imported_is_one_line(installed):
    from harness.errors import HarnessError
    from harness.strategy import get_strategy

    installed("broken_strategy", {"broken": "no_such_module_here:Thing"})
    with pytest.raises(HarnessError, match=r"^strategy 'broken' \(entry point no_such_module_here:Thing of "
                                           r"broken_strategy\) cannot be imported \(ModuleNotFoundError: .*\): "
                                           r"fix or reinstall the package that provides it$"):
        get_strategy("base")


def test_harness_list_pages_come_from_strategies(capsys):
    from harness.cli import main

    main(["list", "dnd-presets"])
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-1.5b-code", "qwen2.5-7b",
                                                  "qwen2.5-vl-3b",
                                                  "smollm2-small", "tiny-random"]


def test_architecture_page_names_every_hook_and_files_that_exist():
    from harness.strategy import HOOKS

    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert [h for h in HOOKS if f"`{h}(" not in text] == []
    paths = {p for p in re.findall(r"`([\w./<>-]+)`", text) if "/" in p and "<" not in p and " " not in p}
    assert len(paths) > 20
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []
