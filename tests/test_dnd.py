"""DnD end to end on tiny-random: library → generator → adapter → evaluation, its controls, its errors."""
import json
import shutil
import statistics

import pytest
import torch
from conftest import compose, needs_data

from harness.errors import HarnessError

LIBRARY = "strategy.library=[arc_challenge,openbookqa]"
COMMON = ["model=tiny-random", "task=arc_easy", "eval.limit=8", "budget=flops_3e12", "progress=false"]
SMALL = [*COMMON, LIBRARY, "strategy.collect.steps=4", "strategy.collect.checkpoints=3", "strategy.meta_train.steps=40",
         "strategy.meta_train.log_every=1", "strategy.bank=16"]


def _run(runs, *overrides, strategy="dnd"):
    from harness.runner import run_cell

    settings = SMALL if strategy.startswith("dnd") else COMMON
    cfg = compose(*settings, f"strategy={strategy}", f"runs_dir={runs}", *overrides)
    folder = run_cell(cfg)
    return folder, json.loads((folder / "record.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("dnd_runs")


@pytest.fixture(scope="module")
def first(runs):
    return _run(runs)


@needs_data
def test_generated_adapter_is_a_peft_adapter_scored_like_any_other(first, fresh_tiny):
    from peft import PeftModel

    folder, record = first
    adaptation = record["adaptation"]
    assert adaptation["kind"] == "adapter" and adaptation["labels_used"] == 0
    model = PeftModel.from_pretrained(fresh_tiny.model, adaptation["adapter_dir"])
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    assert all(torch.isfinite(p).all() and p.abs().sum() > 0 for p in lora.values())
    assert record["metrics"]["n"] == 8 and 0 <= record["metrics"]["acc"] <= 1
    phases = [c["phase"] for c in record["costs"]]
    assert phases == ["collect", "collect", "meta_train", "generate", "inference"]


@needs_data
def test_conditions_come_from_the_pool_never_from_evaluated_items(first):
    from harness.tasks import TaskHandle

    _, record = first
    task = TaskHandle.from_cfg(compose("task=arc_easy").task)
    pool = task.pool_docs
    rows = record["adaptation"]["details"]["condition_rows"]
    assert len(rows) == 4  # the tiny-random preset's N
    conditions = {task.unlabeled_prompt(pool[i]) for i in rows}
    evaluated = {task.unlabeled_prompt(task.eval_docs[i]) for i in record["eval"]["doc_ids"]}
    all_eval = {task.unlabeled_prompt(d) for d in task.eval_docs}
    assert not conditions & evaluated and not conditions & all_eval


@needs_data
def test_meta_training_loss_goes_down_and_is_logged(first):
    _, record = first
    details = record["adaptation"]["details"]
    curve = json.loads((__import__("pathlib").Path(details["generator"]) / "generator.json").read_text())["loss_curve"]
    losses = [loss for _, loss in curve]
    assert len(losses) >= 40
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


@needs_data
def test_every_generator_is_checked_on_the_tasks_it_trained_on(first, tmp_path):
    """Seen-task reconstruction (diagnostics.reconstruction) is computed with each generator: per library task, on
    prompts it trained on and on held-back pool prompts; the record carries the summary and its label. One
    meta-training step cannot reconstruct anything: `underfit`, and lower seen-task cosine than 40 steps."""
    from pathlib import Path

    _, record = first
    summary = record["adaptation"]["details"]["reconstruction"]
    full = json.loads((Path(record["adaptation"]["details"]["generator"]) / "generator.json").read_text())
    diagnostic = full["reconstruction"]
    assert set(diagnostic["tasks"]) == {"arc_challenge", "openbookqa"}
    assert all(set(row) == {"seen", "held_back"} for row in diagnostic["tasks"].values())
    assert summary["label"] == diagnostic["label"] in ("ok", "underfit", "collapsed")
    assert summary["seen_cosine"] == pytest.approx(statistics.fmean(
        row["seen"]["cosine"] for row in diagnostic["tasks"].values()))
    _, once = _run(tmp_path, "strategy.meta_train.steps=1")  # its own runs folder: the report test reads `runs`
    one_step = once["adaptation"]["details"]["reconstruction"]
    assert one_step["label"] == "underfit" and one_step["seen_cosine"] < min(0.9, summary["seen_cosine"])


@needs_data
def test_costs_one_off_phases_are_shared_and_generation_is_metered(first):
    _, record = first
    costs = {c["phase"]: c for c in record["costs"]}
    gen = costs["generate"]
    assert gen["flops_measured"] > 0 and 0.75 < gen["flops_measured"] / gen["flops_analytic"] < 1.25
    assert costs["meta_train"]["shared_by"] == 1  # an explicit library, no declared targets: charged whole
    assert costs["meta_train"]["artifact"].startswith("dnd-generator/")
    assert sorted(c["artifact"].split("/")[1] for c in record["costs"] if c["phase"] == "collect") == \
        ["arc_challenge", "openbookqa"]
    one_off = record["adaptation_cost"]["one_off"]["flops_measured"]
    assert one_off == sum(c["flops_measured"] for c in record["costs"] if c["shared_by"])
    assert record["adaptation_cost"]["flops_measured"] == gen["flops_measured"]
    # The budget pays the generation, serving the adapter over the horizon, and the one-off share (whole here).
    use = record["adaptation"]["budget"]
    assert use["one_off"] == "amortized" and use["parts"]["one_off"] == pytest.approx(one_off)
    assert use["parts"]["own"] == gen["flops_measured"]
    assert use["parts"]["queries"] == pytest.approx(50 * record["adaptation"]["per_query_extra_flops"])
    assert use["spent"] == pytest.approx(sum(use["parts"].values())) and not use["bound"]
    assert record["at_horizon"]["flops_measured"] == pytest.approx(
        gen["flops_measured"] + one_off + 50 * record["per_query"]["flops_measured"])


@needs_data
def test_one_off_costs_are_predicted_before_they_are_spent(runs, first, tiny):
    from baselines.dnd.config import DnDSettings, get_preset
    from baselines.dnd.encoder import load_encoder
    from baselines.dnd.generator import predict_meta_train_flops
    from baselines.dnd.library import predict_collect_flops, task_handle
    from harness.strategy_settings import settings_from

    _, record = first
    measured = {c["artifact"].split("/")[1]: c["flops_measured"] for c in record["costs"] if c["phase"] == "collect"}
    settings = settings_from(DnDSettings, compose(*SMALL, "strategy=dnd").strategy)  # the cell's: 4 steps, 3 kept
    assert (settings.collect.steps, settings.collect.batch_size, settings.meta_train.steps) == (4, 4, 40)
    for name in ("arc_challenge", "openbookqa"):
        predicted = predict_collect_flops(task_handle(name), tiny.model, tiny.tokenizer,
                                          settings.collect.for_preset(get_preset("tiny-random")))
        assert predicted == pytest.approx(measured[name], rel=0.02)  # against FlopCounterMode on the real steps
    meta = next(c for c in record["costs"] if c["phase"] == "meta_train")
    predicted = predict_meta_train_flops(get_preset("tiny-random"), load_encoder("all-MiniLM-L6-v2"), [16, 16],
                                         settings.meta_train)
    assert predicted == pytest.approx(meta["flops_measured"], rel=0.02)


@needs_data
def test_a_one_off_share_that_does_not_fit_stops_before_any_compute(tmp_path, runs, first):
    from harness.runner import run_cell

    _, record = first
    one_off = record["adaptation_cost"]["one_off"]["flops_measured"]
    amount = 0.6 * one_off  # the whole one-off (one declared target) does not fit; half of it does
    cfg = compose(*SMALL, "strategy=dnd", f"runs_dir={tmp_path}", f"budget.amount={amount}")
    with pytest.raises(HarnessError, match="cannot pay for DnD's one-off phases .* share alone is") as err:
        run_cell(cfg)
    assert "budget.one_off=excluded" in str(err.value) and "strategy.targets" in str(err.value)
    assert not (tmp_path / "tiny-random" / "_shared").exists() and not list(tmp_path.rglob("record.json"))
    # The library and generator the module trained already (the same content keys): nothing is retrained below.
    shutil.copytree(runs / "tiny-random" / "_shared", tmp_path / "tiny-random" / "_shared")
    # Shared by two declared targets, the amortized half fits; charged whole, it does not.
    two = ["strategy.targets=[arc_easy,boolq]"]
    with pytest.raises(HarnessError, match="charged whole"):
        run_cell(compose(*SMALL, "strategy=dnd", f"runs_dir={tmp_path}", f"budget.amount={amount}", *two,
                         "budget.one_off=whole"))
    folder = run_cell(compose(*SMALL, "strategy=dnd", f"runs_dir={tmp_path}", f"budget.amount={amount}", *two))
    use = json.loads((folder / "record.json").read_text())["adaptation"]["budget"]
    assert use["parts"]["one_off"] == pytest.approx(one_off / 2, rel=0.02) and use["spent"] <= amount
    excluded = run_cell(compose(*SMALL, "strategy=dnd", f"runs_dir={tmp_path}", f"budget.amount={amount}",
                                "budget.one_off=excluded"))
    use = json.loads((excluded / "record.json").read_text())["adaptation"]["budget"]
    assert use["one_off"] == "excluded" and use["parts"]["one_off"] == 0


@needs_data
def test_second_adapter_reuses_library_and_generator_with_new_prompts(runs, first):
    _, rec0 = first
    _, rec1 = _run(runs, "seed=1")
    reused = [c["details"]["reused"] for c in rec1["costs"] if c["phase"] in ("collect", "meta_train")]
    assert reused == [True, True, True]
    d0, d1 = rec0["adaptation"]["details"], rec1["adaptation"]["details"]
    assert d0["generator_key"] == d1["generator_key"] and d0["condition_rows"] != d1["condition_rows"]
    from safetensors.torch import load_file

    a0 = load_file(rec0["adaptation"]["adapter_dir"] + "/adapter_model.safetensors")
    a1 = load_file(rec1["adaptation"]["adapter_dir"] + "/adapter_model.safetensors")
    assert any(not torch.equal(a0[k], a1[k]) for k in a0)


@needs_data
def test_shared_targets_divide_the_one_off_cost(runs, first):
    _, record = _run(runs, "strategy.targets=[arc_easy,boolq]")
    costs = [c for c in record["costs"] if c["shared_by"]]
    assert [c["shared_by"] for c in costs] == [2, 2, 2]
    amortized = record["adaptation_cost"]["one_off_amortized"]["flops_measured"]
    assert amortized == pytest.approx(record["adaptation_cost"]["one_off"]["flops_measured"] / 2)


@needs_data
def test_controls_member_mean_nearest(runs, first):
    from safetensors.torch import load_file

    _, member = _run(runs, "seed=1", strategy="dnd_member")
    assert member["adaptation"]["details"]["member_task"] == "openbookqa"  # seed 1 → library task 1 (sorted)
    assert member["adaptation"]["variant"] == "member=openbookqa"  # its own row in the report, never a seed
    _, mean = _run(runs, strategy="dnd_mean")
    lib = sorted((runs / "tiny-random" / "_shared" / "library").glob("*/entry.json"))
    states = []
    for path in lib:
        entry = json.loads(path.read_text())
        states += [load_file(str(path.parent / c / "adapter_model.safetensors")) for c in entry["checkpoints"]]
    got = load_file(mean["adaptation"]["adapter_dir"] + "/adapter_model.safetensors")
    key = next(iter(got))
    assert len(states) == 6 and mean["adaptation"]["details"]["checkpoints_averaged"] == 6
    assert torch.allclose(got[key], torch.stack([s[key] for s in states]).mean(0), atol=1e-7)
    _, nearest = _run(runs, strategy="dnd_nearest")
    d = nearest["adaptation"]["details"]
    assert d["nearest_task"] in ("arc_challenge", "openbookqa") and d["nearest_task"] == max(d["cosine"], key=d["cosine"].get)


@needs_data
def test_report_writes_the_leave_one_out_table(runs, first, tmp_path):
    from harness import report

    _run(runs, "seed=1")
    for strategy in ("dnd_mean", "dnd_nearest"):
        _run(runs, strategy=strategy)
    _run(runs, strategy="base")
    report.build(tmp_path, runs_dir=runs)
    from harness.store import iter_records, variant_key

    records = [r for _, r in iter_records(runs)]
    accs = {r["cell"]["seed"]: r["metrics"]["acc"] for r in records if r["cell"]["strategy"] == "dnd"
            and not r["config"]["strategy"]["targets"]}
    variant = next(variant_key(r["config"]) for r in records if r["cell"]["strategy"] == "dnd"
                   and not r["config"]["strategy"]["targets"])
    table = (tmp_path / "dnd_loo.md").read_text()
    row = next(line for line in table.splitlines() if f"| arc_easy | {variant} |" in line)
    cols = [c.strip() for c in row.strip("|").split("|")]
    base = next(r["metrics"]["acc"] for r in records if r["cell"]["strategy"] == "base")
    assert sorted(accs) == [0, 1] and cols[3] == f"{base:.3f}"
    assert cols[8] == f"{sum(accs.values()) / 2:.3f} ± " + f"{statistics.stdev(accs.values()):.3f}" and cols[9] == "2"
    checks = [r["adaptation"]["details"]["reconstruction"] for r in records if r["cell"]["strategy"] == "dnd"
              and not r["config"]["strategy"]["targets"]]  # both seeds read the one generator
    assert cols[14] == f"{checks[0]['seen_cosine']:.3f} ({checks[0]['label']})"


@pytest.mark.parametrize("overrides, message", [
    (["strategy.library=[arc_easy,openbookqa]"], "leakage"),
    (["strategy.library=[openbookqa]"], "at least two tasks"),
    (["strategy.library=null", "strategy.universe=[arc_easy,boolq]"], "at least two tasks"),
    (["strategy.preset=smollm2-tiny"], "set strategy.preset to tiny-random$"),
    (["strategy.preset=nope"], "unknown DnD generator preset"),
    (["strategy.library=[arc_challenge,nope]"], "no config"),
])
@needs_data
def test_bad_input_is_one_line_error_before_any_compute(tmp_path, overrides, message):
    from harness.runner import run_cell

    cfg = compose(*SMALL, "strategy=dnd", f"runs_dir={tmp_path}", *overrides)
    with pytest.raises(HarnessError, match=message) as err:
        run_cell(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "tiny-random" / "_shared").exists()  # no library trained, no generator


@needs_data
def test_each_library_task_starts_from_its_own_lora_a(tiny, tmp_path):
    """Every library LoRA used to start from the same A (one trainer seed for all tasks): the seed is now offset by
    the task, so two tasks' first saved A matrices differ, and the same task trained twice gives the same one."""
    from safetensors.torch import load_file

    from baselines.dnd.config import DnDSettings, get_preset
    from baselines.dnd.library import collect_entry, task_handle
    from harness.strategy_settings import settings_from

    cfg = compose("model=tiny-random", "strategy=dnd", "strategy.collect.steps=2", "strategy.collect.checkpoints=1",
                  "strategy.collect.lr=1e-6")  # one step at a tiny rate: A stays its initial draw
    settings = settings_from(DnDSettings, cfg.strategy).collect.for_preset(get_preset("tiny-random"))
    assert settings.task_seed("arc_challenge") != settings.task_seed("openbookqa")

    def first_a(task, root):
        entry, _ = collect_entry(task_handle(task), tiny.model, tiny.tokenizer, dict(cfg.model), settings, root,
                                 torch.device("cpu"), progress=False, say=lambda *_: None)
        state = load_file(str(entry.checkpoints[0] / "adapter_model.safetensors"))
        return torch.cat([v.flatten() for k, v in sorted(state.items()) if "lora_A" in k])

    a, b = first_a("arc_challenge", tmp_path / "one"), first_a("openbookqa", tmp_path / "one")
    again = first_a("arc_challenge", tmp_path / "two")  # another library folder: trained again, not reused
    assert torch.equal(a, again)
    assert abs(torch.nn.functional.cosine_similarity(a, b, dim=0)) < 0.1  # independent draws, not one shared A
