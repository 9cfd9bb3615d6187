"""DnD end to end on tiny-random: library → generator → adapter → evaluation, its controls, its errors."""
import json
import shutil
import statistics

import pytest
import torch
from conftest import compose, needs_data, write_library

from harness.errors import HarnessError

LIBRARY = "strategy.library=[arc_challenge,openbookqa]"
COMMON = ["model=tiny-random", "task=arc_easy", "eval.limit=8", "budget=flops_3e12", "progress=false"]
SMALL = [*COMMON, LIBRARY, "strategy.collect.steps=4", "strategy.collect.checkpoints=3", "strategy.meta_train.steps=40",
         "strategy.meta_train.log_every=1", "strategy.bank=16", "strategy.collect.check_items=8"]


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
    # the accuracy half: each generated LoRA on its library task's 8 checked items, beside that task's library LoRA
    checks = record["adaptation"]["details"]["library_checks"]
    for task, row in summary["accuracy"].items():
        own = checks[task]["own_task"]
        assert row["n"] == own["n"] == 8 and 0 <= row["generated"] <= 1 and 0 <= row["library_mean"] <= 1
        assert (row["library_lora"], row["base"]) == (own["lora"], own["base"])
    beating = [t for t in checks if checks[t]["own_task"]["beats_base"]]
    assert summary["gain_recovered_over"] == sorted(beating)
    if beating:
        gain = sum(checks[t]["own_task"]["lora"] - checks[t]["own_task"]["base"] for t in beating)
        got = sum(summary["accuracy"][t]["generated"] - checks[t]["own_task"]["base"] for t in beating)
        assert summary["gain_recovered"] == pytest.approx(got / gain)
    else:
        assert summary["gain_recovered"] is None
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
    preset = get_preset("tiny-random")
    collect, meta_settings = settings.collect.for_preset(preset), settings.meta_train.for_preset(preset)
    assert (collect.steps, collect.batch_size, meta_settings.steps) == (4, 4, 40)  # batch: the preset's recipe
    for name in ("arc_challenge", "openbookqa"):
        predicted = predict_collect_flops(task_handle(name), tiny.model, tiny.tokenizer, collect)
        assert predicted == pytest.approx(measured[name], rel=0.02)  # against FlopCounterMode on the real steps
    meta = next(c for c in record["costs"] if c["phase"] == "meta_train")
    predicted = predict_meta_train_flops(preset, load_encoder("all-MiniLM-L6-v2"), [16, 16], meta_settings)
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
    assert cols[16] == f"{checks[0]['seen_cosine']:.3f} ({checks[0]['label']})"
    # the paired test against base: the two adapters' scores averaged per item, base's on the same items
    assert cols[11].startswith(f"{sum(accs.values()) / 2 - base:+.3f} (")
    mean = next(r["metrics"]["acc"] for r in records if r["cell"]["strategy"] == "dnd_mean")
    assert cols[12].startswith(f"{sum(accs.values()) / 2 - mean:+.3f} (")
    # the library page: each library LoRA against base on 8 of its own task's items, and its trajectory
    page = (tmp_path / "dnd_library.md").read_text()
    library = next(r["adaptation"]["details"]["library_checks"] for r in records if r["cell"]["strategy"] == "dnd")
    for task, check in library.items():
        row = next(line for line in page.splitlines() if f"| {task} | {check['entry']} |" in line)
        cols = [c.strip() for c in row.strip("|").split("|")]
        own = check["own_task"]
        assert cols[3] == "8" == str(own["n"]) and cols[4] == f"{own['base']:.3f} ± {own['base_stderr']:.3f}"
        assert cols[8] == ("yes" if own["beats_base"] else "**no** (flagged)") and cols[9] == "3"
    assert "| arc_challenge | 1 |" in page  # the pairwise matrix's diagonal


@pytest.mark.parametrize("overrides, message", [
    (["strategy.library=[arc_easy,openbookqa]"], "leakage"),
    (["strategy.library=[openbookqa]"], "at least two tasks"),
    (["strategy.library=null", "strategy.universe=[arc_easy,boolq]"], "at least two tasks"),
    (["strategy.preset=smollm2-small"], "set strategy.preset to tiny-random$"),
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
@pytest.mark.parametrize("init", ["shared", "per_task"])
def test_library_lora_a_is_shared_or_per_task(tiny, tmp_path, init):
    """`collect.init: shared` (the default, as the paper's runs: one seed before every task's LoRA) starts every
    library task from one A, so their B's share a coordinate system; `per_task` seeds A by the task. Either way the
    batch order is the task's own, and the same task trained twice starts from the same A."""
    from safetensors.torch import load_file

    from baselines.dnd.config import DnDSettings, get_preset
    from baselines.dnd.library import collect_entry, task_handle
    from harness.strategy_settings import settings_from

    cfg = compose("model=tiny-random", "strategy=dnd", "strategy.collect.steps=2", "strategy.collect.checkpoints=1",
                  "strategy.collect.lr=1e-6", f"strategy.collect.init={init}",  # a tiny rate: A stays its first draw
                  "strategy.collect.check_items=0")
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
    similarity = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    if init == "shared":
        assert similarity > 0.999  # one initial A, moved by one step at 1e-6
    else:
        assert abs(similarity) < 0.1  # independent draws


@needs_data
def test_library_check_flags_a_lora_that_does_not_beat_base(fresh_tiny, tmp_path):
    """library_check scores a library LoRA against base on its own task's eval items, paired. By construction: a
    LoRA trained hard on the very items it is scored on memorizes them and beats the random base (McNemar p < 0.05);
    one that barely moved (a 1e-9 rate) scores as base and is flagged."""
    from baselines.dnd.library import library_check, task_handle
    from harness.budget import Budget, TrainingBudget
    from harness.costs import PhaseMeter
    from harness.trainer import LoraSettings, train_lora

    task = task_handle("arc_easy")
    items = 16
    docs = [task.eval_docs[i] for i in task.eval_indices(items, 0)]
    examples = [task.training_example(d) for d in docs]

    def trained(lr, steps, out):
        settings = LoraSettings(rank=8, alpha=16, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj",
                                "gate_proj", "up_proj", "down_proj"), lr=lr, warmup_frac=0.0, schedule="constant",
                                weight_decay=0.0, batch_size=8, max_length=256, max_steps=None, checkpoint_every=None,
                                checkpoint_start=1)
        budget = TrainingBudget(Budget("steps", "steps", steps, 0, "excluded", "recompute"))
        with PhaseMeter("collect", torch.device("cpu")) as meter:
            return train_lora(fresh_tiny.model, fresh_tiny.tokenizer, examples, budget, settings, out, meter,
                              progress=False).adapter_dir

    good = library_check(task, fresh_tiny.model, fresh_tiny.tokenizer, trained(2e-2, 150, tmp_path / "good"), items,
                         torch.device("cpu"))
    assert good["n"] == items and good["test"] == "McNemar exact"
    assert good["lora"] >= good["base"] + 0.4 and good["p"] < 0.05 and good["beats_base"]
    idle = library_check(task, fresh_tiny.model, fresh_tiny.tokenizer, trained(1e-9, 1, tmp_path / "idle"), items,
                         torch.device("cpu"))
    assert idle["lora"] == idle["base"] == good["base"] and idle["p"] == 1.0 and not idle["beats_base"]


def _synthetic_library(root, tasks, checkpoints=4):
    """Two tasks' LoRA trajectories on tiny-random's layout, built rather than trained: one shared A (as
    `collect.init: shared` gives), each task its own random B drifting a little step to step."""
    from baselines.dnd.tokenizer import lora_shapes

    shapes = lora_shapes(n_layers=2, hidden=64, intermediate=128, kv_dim=32, rank=8)
    g = torch.Generator().manual_seed(0)
    shared_a = {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items() if ".lora_A." in k}
    trajectories = {}
    for task in tasks:
        b = {k: torch.randn(s, generator=g) * 0.01 for k, s in shapes.items() if ".lora_B." in k}
        trajectories[task] = [{**shared_a, **{k: v * (1 + 0.05 * c) + 0.002 * torch.randn(v.shape, generator=g)
                                              for k, v in b.items()}} for c in range(checkpoints)]
    return write_library(root, trajectories), shapes


@needs_data
def test_a_generator_trained_long_enough_reconstructs_both_seen_tasks(tmp_path):
    """The tiny-random preset's generator, trained 200 steps on two tasks' trajectories, emits for prompts of each
    task a LoRA whose weight update has cosine >= 0.9 with that task's checkpoint mean on prompts it trained on (and
    >= 0.8 on held-back prompts of the same task), keeps the two tasks apart, and is labelled `ok`; one step leaves
    it `underfit`."""
    from dataclasses import replace

    from baselines.dnd.config import DnDSettings, get_preset
    from baselines.dnd.encoder import load_encoder
    from baselines.dnd.generator import meta_train
    from baselines.dnd.library import task_handle
    from baselines.dnd.tokenizer import LoraTokenizer
    from harness.strategy_settings import settings_from

    entries, shapes = _synthetic_library(tmp_path / "library", ["arc_easy", "boolq"])
    preset = get_preset("tiny-random")
    settings = settings_from(DnDSettings, compose("model=tiny-random", "strategy=dnd").strategy)
    meta = settings.meta_train.for_preset(preset)
    assert meta.steps == 200
    tasks = {e.task: task_handle(e.task) for e in entries}
    tok, encoder = LoraTokenizer(shapes, 8, 32), load_encoder("all-MiniLM-L6-v2")

    def trained(m, root):
        gen, _ = meta_train(preset, encoder, entries, tasks, tok, m, 16, root, torch.device("cpu"), progress=False,
                            say=lambda *_: None)
        return gen.info["reconstruction"]

    done = trained(meta, tmp_path / "long")
    assert done["label"] == "ok", done
    assert all(row["seen"]["cosine"] >= 0.9 and row["held_back"]["cosine"] >= 0.8 for row in done["tasks"].values())
    assert done["distinct"] > 0.5 and abs(done["library_pairwise_cosine"]["arc_easy"]["boolq"]) < 0.2
    once = trained(replace(meta, steps=1), tmp_path / "once")
    assert once["label"] == "underfit" and once["seen_cosine"] < 0.9
