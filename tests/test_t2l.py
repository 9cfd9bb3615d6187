"""Text-to-LoRA end to end on tiny-random: training by reconstruction and by SFT, the strategy on DnD's library,
its controls on the description, and its errors."""
import json
from pathlib import Path

import pytest
import torch
from conftest import compose, needs_data, write_library

from harness.errors import HarnessError

LIBRARY = "strategy.library=[arc_challenge,openbookqa]"
SMALL = ["model=tiny-random", "task=arc_easy", "eval.limit=8", "budget=flops_3e12", "progress=false", LIBRARY,
         "strategy.collect.steps=4", "strategy.collect.checkpoints=3", "strategy.collect.check_items=8",
         "strategy.hypernet.steps=30", "strategy.hypernet.log_every=1"]


def _settings(variant, mode, steps, lr, tasks=2):
    from baselines.t2l.config import HypernetSettings

    return HypernetSettings(None, variant, mode, steps, tasks, lr, 0.0, 0.1, 1.0, 0, 10)


@needs_data
def test_recon_reconstructs_the_seen_tasks_and_one_step_does_not(tmp_path):
    """L trained by reconstruction on two tasks' LoRAs (DnD's synthetic library: one shared A, a random B per task)
    emits, from a training description of each task, a LoRA whose weight update has cosine >= 0.99 with that task's
    LoRA, also from its held-out evaluation description, keeps the tasks apart, and is labelled `ok`; the loss falls
    tenfold. After one step it emits z-scores near 0, i.e. the library mean for every task: `collapsed`."""
    from test_dnd import _synthetic_library

    from baselines.t2l.config import get_preset
    from baselines.t2l.descriptions import DescriptionEncoder
    from baselines.t2l.hypernet import meta_train
    from baselines.t2l.strategy import _reconstruction

    entries, _ = _synthetic_library(tmp_path / "library", ["arc_easy", "boolq"])
    keys = sorted(entries[0].state())
    encoder = DescriptionEncoder("all-MiniLM-L6-v2", torch.device("cpu"))

    def trained(settings, root):
        net, reused = meta_train(get_preset("tiny-random"), settings, encoder, entries, root, torch.device("cpu"),
                                 progress=False, say=lambda *_: None,
                                 diagnose=lambda t: _reconstruction(t, encoder, entries, keys, None))
        assert not reused
        return net

    done = trained(_settings("L", "recon", 200, 5e-3), tmp_path / "long")
    check = done.info["reconstruction"]
    assert check["label"] == "ok" and check["distinct"] > 0.9, check
    assert all(r["seen"]["cosine"] >= 0.99 and r["held_back"]["cosine"] >= 0.99 for r in check["tasks"].values())
    assert done.cost.details["final_loss"] < done.cost.details["first_loss"] / 10
    assert done.cost.phase == "meta_train" and done.cost.flops_measured > 0
    once = trained(_settings("L", "recon", 1, 5e-3), tmp_path / "once")
    assert once.info["reconstruction"]["label"] == "collapsed"
    assert once.info["reconstruction"]["cosine_to_library_mean"] > 0.99


@needs_data
def test_sft_learns_task_conditional_adapters(tmp_path, fresh_tiny):
    """Two synthetic tasks with the same prompts and different answers, told apart only by their descriptions: after
    SFT through the frozen tiny model, the LoRA generated from each task's description gives a lower loss on its own
    task than on the other, by a clear margin (the description matters)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    from baselines.t2l import descriptions as desc
    from baselines.t2l.config import HypernetPreset, get_preset
    from baselines.t2l.hypernet import SftData, join_state, meta_train
    from baselines.t2l.model import LoraShape
    from harness.trainer import LoraSettings, _collate, encode_example

    model, tok = fresh_tiny.model, fresh_tiny.tokenizer
    prompts = [f"Item {i}: the answer is" for i in range(20)]
    examples = {"arc_easy": [(p, " red red red") for p in prompts], "boolq": [(p, " blue blue blue") for p in prompts]}
    lora = LoraSettings(rank=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj"), lr=1e-3, warmup_frac=0.0,
                        schedule="constant", weight_decay=0.0, batch_size=1, max_length=64, max_steps=None,
                        checkpoint_every=0, checkpoint_start=0)
    tiny = get_preset("tiny-random")
    preset = HypernetPreset("tiny-qv", tiny.latent, tiny.head_in,
                            LoraShape(2, 8, tuple(m for m in tiny.shape.modules if m[0] in ("q_proj", "v_proj"))))
    entries = write_library(tmp_path / "library", {t: [{}] for t in examples})  # sft reads only the task names
    encoder = desc.DescriptionEncoder("all-MiniLM-L6-v2", torch.device("cpu"))
    trained, _ = meta_train(preset, _settings("L", "sft", 60, 1e-2), encoder, entries, tmp_path / "h",
                            torch.device("cpu"), progress=False, say=lambda *_: None,
                            sft=SftData(model, tok, examples, lora))
    assert not any("lora_" in n for n, _ in model.named_parameters())  # the base model is given back unwrapped
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0))
    keys = [n.replace(".default", "") for n, _ in peft_model.named_parameters() if "lora_" in n]

    def loss(state, task):
        set_peft_model_state_dict(peft_model, state)
        batch = _collate([encode_example(tok, p, c, 64) for p, c in examples[task]], tok.eos_token_id)
        with torch.no_grad():
            return float(peft_model(**batch).loss)

    try:
        for own, other in (("arc_easy", "boolq"), ("boolq", "arc_easy")):
            emb, _ = encoder.embed([desc.load(own).train[0]])
            state = join_state(trained.lora(emb[0]), keys)
            assert loss(state, own) < loss(state, other) - 0.3
    finally:
        peft_model.unload()
    assert trained.cost.details["final_loss"] < trained.cost.details["first_loss"]


def _run(runs, *overrides, strategy="t2l"):
    from harness.runner import run_cell

    base = SMALL[:5]  # model, task, items, budget: every strategy; the library keys: those that read one
    library = [*base, LIBRARY, *SMALL[6:9]]  # the library keys (the same LoRAs as the t2l cells')
    settings = SMALL if strategy.startswith("t2l") else library if strategy in ("multitask_lora", "arrow", "dnd_mean") \
        else base
    folder = run_cell(compose(*settings, f"strategy={strategy}", f"runs_dir={runs}", *overrides))
    return folder, json.loads((folder / "record.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("t2l_runs")


@needs_data
def test_t2l_cell_end_to_end_on_dnds_library(runs, fresh_tiny):
    """A t2l cell: DnD's library (two LoRAs, cached under the same keys DnD uses), the hypernetwork's meta_train, one
    generated peft adapter scored like any other; seeds are the three evaluation descriptions; the controls read
    other tasks' descriptions or random letters; a second cell reuses the library and the hypernetwork."""
    from peft import PeftModel

    from baselines.t2l import descriptions as desc

    folder, record = _run(runs)
    adaptation = record["adaptation"]
    details = adaptation["details"]
    assert adaptation["kind"] == "adapter" and adaptation["labels_used"] == 0
    assert [c["phase"] for c in record["costs"]] == ["collect", "collect", "meta_train", "generate", "inference"]
    assert details["description"] == desc.load("arc_easy").eval[0] and details["description_source"].startswith(
        "aligned: arc_easy eval #0")
    assert set(details["reconstruction"]["accuracy"]) == {"arc_challenge", "openbookqa"}
    model = PeftModel.from_pretrained(fresh_tiny.model, adaptation["adapter_dir"])
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * 7 * 2 and all(torch.isfinite(p).all() for p in lora.values())
    assert 0 <= record["metrics"]["acc"] <= 1 and record["metrics"]["n"] == 8
    meta = next(c for c in record["costs"] if c["phase"] == "meta_train")
    assert meta["shared_by"] == 1 and meta["flops_measured"] > 0

    _, second = _run(runs, "seed=1")
    reused = {c["phase"]: c["details"].get("reused") for c in second["costs"] if c["phase"] in ("collect",
                                                                                             "meta_train")}
    assert reused == {"collect": True, "meta_train": True}
    assert second["adaptation"]["details"]["description"] == desc.load("arc_easy").eval[1]
    _, unaligned = _run(runs, "strategy.descriptions=unaligned")
    text = unaligned["adaptation"]["details"]["description"]
    assert any(text in desc.load(t).eval for t in ("arc_challenge", "openbookqa"))
    _, custom = _run(runs, "strategy.description='Pick the right answer to a science question.'")
    assert custom["adaptation"]["details"]["description_source"] == "custom"
    assert custom["adaptation"]["variant"] == "custom description"

    # the report's held-out page: one row per T2L configuration, beside base, with the paired test against it
    from harness import report

    _, base = _run(runs, strategy="base")
    _, library_mean = _run(runs, strategy="dnd_mean")
    # a T2L cell under another budget (the hypernetwork reused): its row takes the controls of the budget with base
    _, other_budget = _run(runs, "budget=flops_1e13")
    assert {c["phase"]: c["details"].get("reused") for c in other_budget["costs"]}["meta_train"] is True
    out = runs / "report"
    report.build(out, runs_dir=runs)
    held_out = (out / "t2l_loo.md").read_text().split("**Seen tasks**")[0]
    rows = [line for line in held_out.splitlines() if "| arc_easy |" in line]
    assert len(rows) == 4  # aligned (two descriptions), unaligned, custom; aligned under flops_1e13
    moved = [c.strip() for c in next(r for r in rows if "flops_1e13" in r).strip("|").split("|")]
    assert moved[2] == "M, recon, aligned (flops_1e13; controls under flops_3e12)"
    assert moved[3] == f"{base['metrics']['acc']:.3f}" and moved[5] == f"{library_mean['metrics']['acc']:.3f}"
    aligned = [c.strip() for c in next(r for r in rows if "| M, recon, aligned |" in r).strip("|").split("|")]
    mean = (record["metrics"]["acc"] + second["metrics"]["acc"]) / 2
    assert aligned[3] == f"{base['metrics']['acc']:.3f}" and aligned[10].startswith(f"{mean:.3f} ± ")
    assert aligned[11] == "2" and aligned[12].startswith(f"{mean - base['metrics']['acc']:+.3f} (")
    assert any("M, recon, custom" in r for r in rows) and any("M, recon, unaligned" in r for r in rows)
    assert aligned[14].startswith(f"{mean - library_mean['metrics']['acc']:+.3f} (")  # T2L − library mean (p)
    check = details["reconstruction"]
    assert aligned[15].startswith(f"{check['seen_cosine']:.3f} ({check['label']})")
    # the seen-task table: the hypernetwork on each task it trained on, beside that task's library LoRA and base
    page = (out / "t2l_loo.md").read_text()
    for task, row in details["reconstruction"]["accuracy"].items():
        line = next(x for x in page.splitlines() if f"| T2L M recon | arc_easy | {task} |" in x)
        cols = [c.strip() for c in line.strip("|").split("|")]
        assert cols[4:7] == [f"{row['base']:.3f}", f"{row['library_lora']:.3f}", f"{row['generated']:.3f}"]


@needs_data
def test_multitask_lora_trains_once_on_the_library_pools(runs, fresh_tiny):
    """One LoRA on the union of the library tasks' adaptation pools (all of each pool, none of the target's), served
    as a peft adapter and scored like any other; a second target with the same library reuses it."""
    from peft import PeftModel

    from baselines.dnd.library import task_handle

    _, record = _run(runs, "strategy.steps=4", strategy="multitask_lora")
    details = record["adaptation"]["details"]
    assert details["examples"] == {t: len(task_handle(t).pool_docs) for t in ("arc_challenge", "openbookqa")}
    assert [c["phase"] for c in record["costs"]] == ["collect", "generate", "inference"]
    collect = record["costs"][0]
    assert collect["details"]["steps"] == 4 and not collect["details"]["reused"] and collect["flops_measured"] > 0
    model = PeftModel.from_pretrained(fresh_tiny.model, record["adaptation"]["adapter_dir"])
    assert sum(1 for n, _ in model.named_parameters() if "lora_" in n) == 2 * 7 * 2
    _, other = _run(runs, "strategy.steps=4", "task=boolq", strategy="multitask_lora")
    assert other["costs"][0]["details"]["reused"] and other["adaptation"]["adapter_dir"] == \
        record["adaptation"]["adapter_dir"]


@needs_data
def test_arrow_routes_over_the_library_loras(runs, fresh_tiny):
    """An Arrow cell: copies of the library LoRAs and their router settings in one folder, which the evaluator turns
    into peft's Arrow model (its outputs differ from base and from each single expert's), charged per query for
    top_k LoRA branches and the routing."""
    from peft import PeftModel

    from harness.evaluate import attach_adapter

    _, record = _run(runs, "strategy.top_k=2", strategy="arrow")
    adaptation = record["adaptation"]
    folder = adaptation["adapter_dir"]
    routing = json.loads((Path(folder) / "arrow.json").read_text())
    assert routing["experts"] == ["experts/arc_challenge", "experts/openbookqa"] and routing["top_k"] == 2
    assert [c["phase"] for c in record["costs"]] == ["collect", "collect", "generate", "inference"]
    assert 0 <= record["metrics"]["acc"] <= 1 and adaptation["per_query_extra_flops"] > 0
    ids = torch.tensor([[5, 17, 300, 42, 7, 99]])
    model = fresh_tiny.model
    with torch.no_grad():
        base = model(input_ids=ids).logits
        arrow = attach_adapter(model, folder)
        routed = arrow(input_ids=ids).logits
        arrow.unload()
        experts = []
        for expert in routing["experts"]:
            single = PeftModel.from_pretrained(model, f"{folder}/{expert}")
            experts.append(single(input_ids=ids).logits)
            single.unload()
    assert not torch.allclose(routed, base, atol=1e-5)
    assert all(not torch.allclose(routed, e, atol=1e-5) for e in experts)


@pytest.mark.parametrize("overrides, message", [
    (["strategy.library=[arc_easy,openbookqa]"], "leakage"),
    (["strategy.hypernet.preset=smollm2"], "set strategy.hypernet.preset to tiny-random$"),
    (["strategy.hypernet.variant=XL"], "variant must be one of L, M, S"),
    (["strategy.description=' '"], "strategy.description is empty"),
    (["strategy.descriptions=matching"], "strategy.descriptions must be one of aligned, unaligned, random"),
])
@needs_data
def test_bad_input_is_one_line_error_before_any_compute(tmp_path, overrides, message):
    from harness.runner import run_cell

    cfg = compose(*SMALL, "strategy=t2l", f"runs_dir={tmp_path}", *overrides)
    with pytest.raises(HarnessError, match=message) as err:
        run_cell(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "tiny-random" / "_shared").exists()


@pytest.mark.parametrize("overrides, message", [
    (["strategy.library=[openbookqa]"], "at least two tasks"),
    (["strategy.top_k=3"], "set strategy.top_k to at most 2$"),
])
@needs_data
def test_arrow_bad_input_is_one_line_error_before_any_compute(tmp_path, overrides, message):
    from harness.runner import run_cell

    cfg = compose(*SMALL[:5], LIBRARY, "strategy=arrow", f"runs_dir={tmp_path}", *overrides)
    with pytest.raises(HarnessError, match=message) as err:
        run_cell(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "tiny-random" / "_shared").exists()
