"""Vision-language models on the multimodal tasks: tiny-random-vlm end to end, the tasks' loaders, costs, errors."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose, needs_data

from harness.errors import HarnessError

pytestmark = needs_data

SHORT = "+task.sampling={n: 1, temperature: 0.0, max_gen_toks: 8}"  # a random model never stops by itself
COMMON = ["model=tiny-random-vlm", "task=mathvision", "eval.limit=3", "progress=false", SHORT]
# tiny-random-vlm's vision tower, by hand: 64 x 64 images in 8 x 8 patches = 64 patches; pixel shuffle 2 -> 16 tokens.
# Tower weights: 2 layers x (4 x 32·32 attention + 2 x 32·64 MLP) + the 3·8·8 -> 32 patch convolution = 22,528;
# projector 128 -> 64 = 8,192. Per image: 2·22,528·64 + 2·8,192·16 + 2 layers x 2 heads x (2 + 2)·64·64·16 FLOPs.
PATCHES, IMAGE_TOKENS = 64, 16
VISION_FLOPS = 2 * 22_528 * 64 + 2 * 8_192 * 16 + 2 * 2 * 4 * 64 * 64 * 16  # = 4,194,304


def _run(runs, *overrides):
    from harness.runner import run_cell

    folder = run_cell(compose(*COMMON, f"runs_dir={runs}", *overrides))
    return folder, json.loads((folder / "record.json").read_text())


@pytest.fixture(scope="module")
def vlm():
    from harness.models import load_model

    return load_model(compose("model=tiny-random-vlm").model, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("vlm_runs")


@pytest.fixture(scope="module")
def base_cell(runs):
    return _run(runs, "strategy=base")


@pytest.fixture(scope="module")
def lora_cell(runs):
    return _run(runs, "strategy=lora_fewshot", "strategy.shots=4", "strategy.max_steps=3", "strategy.batch_size=2",
                "strategy.max_length=1024", "budget=steps_50")


def test_tiny_random_vlm_is_a_real_vlm_loaded_through_the_auto_classes(vlm):
    from transformers import Idefics3ForConditionalGeneration, Idefics3Processor

    from harness.vision import language_model_path, lora_module_names, peft_target_modules

    assert isinstance(vlm.model, Idefics3ForConditionalGeneration) and isinstance(vlm.processor, Idefics3Processor)
    assert vlm.tokenizer is vlm.processor.tokenizer and vlm.info["modality"] == "vision"
    assert vlm.processor.image_seq_len == IMAGE_TOKENS
    assert language_model_path(vlm.model) == "model.text_model"
    # the vision tower has q_proj/k_proj/v_proj too: a LoRA by leaf names alone would adapt it
    tower = [n for n, _ in vlm.model.named_modules() if n.startswith("model.vision_model") and n.endswith("q_proj")]
    assert len(tower) == 2
    names = lora_module_names(vlm.model, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    assert len(names) == 2 * 7 and all(n.startswith("model.text_model.layers.") for n in names)
    pattern = peft_target_modules(vlm.model, ("q_proj", "v_proj"))
    import re

    matched = [n for n, _ in vlm.model.named_modules() if re.fullmatch(pattern, n)]
    assert matched == [n for n in names if n.endswith(("q_proj", "v_proj"))] and len(matched) == 4


def test_a_hub_vlm_offline_fails_with_one_line(monkeypatch):
    from harness.models import load_model

    with pytest.raises(HarnessError, match=r"cannot load qwen2.5-vl-3b .*needs the Hugging Face Hub.*tiny-random-vlm"):
        load_model(compose("model=qwen2.5-vl-3b").model, torch.device("cpu"), torch.float32)


def test_vision_tower_flops_analytic_equals_hand_count_and_measured_within_15_percent(vlm):
    from PIL import Image

    from harness.flops import ModelShape, flop_counter
    from harness.vision import image_patches

    shape = ModelShape.of(vlm.model)
    assert (shape.vision_params, shape.projector_params, shape.merge) == (22_528, 8_192, 4)
    assert shape.vision_forward([PATCHES]) == VISION_FLOPS == 4_194_304
    images = [[Image.new("RGB", (90, 60), (200, 30, 30))], [Image.new("RGB", (40, 70), (0, 90, 200))]]
    pixels = vlm.processor.image_processor(images=images, return_tensors="pt")
    patches = image_patches(pixels, shape.patch_size)
    assert patches == [PATCHES, PATCHES]
    with flop_counter() as counter, torch.no_grad():
        vlm.model.model.get_image_features(pixels["pixel_values"], pixels["pixel_attention_mask"])
    measured = counter.get_total_flops()
    assert abs(measured - shape.vision_forward(patches)) <= 0.15 * measured


def test_base_on_mathvision_records_image_tokens_and_vision_flops(base_cell):
    _, record = base_cell
    inference = record["costs"][-1]
    details = inference["details"]
    assert record["metrics"]["n"] == 3 and 0 <= record["metrics"]["accuracy_lenient"] <= 1
    assert details["images"] == 3 and details["image_tokens"] == 3 * IMAGE_TOKENS
    assert details["vision_patches"] == 3 * PATCHES and details["vision_flops_analytic"] == 3 * VISION_FLOPS
    assert record["per_query"]["image_tokens"] == IMAGE_TOKENS
    assert details["prompt_tokens"] > details["image_tokens"]  # the image tokens are part of the prompt's tokens
    assert inference["tokens"] >= details["prompt_tokens"]
    measured, analytic = inference["flops_measured"], inference["flops_analytic"]
    assert measured > 0 and abs(measured - analytic) <= 0.15 * measured
    predicted = record["per_query"]["predicted"]["flops_analytic"]  # priced before evaluation, images included
    assert predicted > VISION_FLOPS


def test_lora_adapts_the_language_model_only_and_reloads_with_identical_scores(runs, lora_cell):
    from safetensors import safe_open

    folder, record = lora_cell
    adapter = Path(record["adaptation"]["adapter_dir"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["target_modules"].startswith("model\\.text_model\\.")
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
    assert len(keys) == 2 * 7 * 2 and all(".text_model.layers." in k for k in keys)
    train = record["costs"][0]
    assert train["phase"] == "train" and record["adaptation"]["labels_used"] == 4
    # 3 steps of batch 2: 6 images through the frozen tower, each 16 tokens of its example
    seen = train["details"]
    assert (seen["images"], seen["image_tokens"], seen["vision_patches"]) == (6, 6 * IMAGE_TOKENS, 6 * PATCHES)
    assert seen["vision_flops_analytic"] == 6 * VISION_FLOPS
    assert abs(train["flops_measured"] - train["flops_analytic"]) <= 0.15 * train["flops_measured"]
    again, reloaded = _run(runs, "strategy=adapter", f"strategy.path={adapter}")
    first = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (again / "samples.jsonl").read_text().splitlines()]
    assert [s["resps"] for s in first] == [s["resps"] for s in second]
    assert reloaded["metrics"]["accuracy_lenient"] == record["metrics"]["accuracy_lenient"]


def test_icl_shows_text_demonstrations_and_refuses_more_than_the_window(runs):
    _, record = _run(runs, "strategy=icl", "strategy.shots=2", "budget=steps_50")
    prefix = record["adaptation"]["prefix"]
    assert record["adaptation"]["labels_used"] == 2 and "<image>" not in prefix and "The answer is" in prefix
    assert record["costs"][-1]["details"]["images"] == 3  # the queries' images only
    with pytest.raises(HarnessError, match=r"icl: 60 demonstrations make queries of up to \d+ tokens, beyond the "
                                           r"model's context window \(2048\): lower strategy.shots"):
        _run(runs, "strategy=icl", "strategy.shots=60", "budget=steps_50")


def test_dnd_generates_a_language_model_lora_for_an_image_task(runs, vlm):
    from peft import PeftModel

    from baselines.dnd.config import presets_fitting
    from harness.models import adapter_problem

    assert "tiny-random" in presets_fitting(vlm.model)
    _, record = _run(runs, "strategy=dnd_multimodal", "strategy.collect.steps=3",
                     "strategy.collect.checkpoints=2", "strategy.collect.max_length=512", "strategy.meta_train.steps=5",
                     "strategy.collect.check_items=0", "strategy.bank=8", "budget=flops_1e15")
    adapter = record["adaptation"]["adapter_dir"]
    assert adapter_problem(adapter) is None
    assert [c["phase"] for c in record["costs"]] == ["collect", "collect", "meta_train", "generate", "inference"]
    model = PeftModel.from_pretrained(vlm.model, adapter)
    try:
        lora = [n for n, _ in model.named_parameters() if "lora_" in n]
        assert len(lora) == 2 * 7 * 2 and all(".text_model." in n for n in lora)
    finally:
        model.unload()
    assert record["costs"][-1]["details"]["images"] == 3


def test_a_text_task_and_an_image_task_in_one_sweep_both_give_records(tmp_path):
    from harness.cli import main

    main(["run", "-m", "model=tiny-random-vlm", "task=arc_easy,mathvision", "strategy=base", "eval.limit=2",
          "progress=false", f"runs_dir={tmp_path}", SHORT])
    records = sorted(p.parent.parent.name for p in tmp_path.glob("tiny-random-vlm/*/*/record.json"))
    assert records == ["arc_easy", "mathvision"]


@pytest.mark.parametrize("overrides, message", [
    (["model=tiny-random"], r"task mathvision shows an image with every item; model tiny-random is text-only: use a "
                            r"vision-language model"),
    (["strategy=t2l"], r"strategy t2l does not adapt on tasks with images \(task mathvision\): use one of "
                       r"adapter, base, dnd, icl, lora"),
    (["engine=vllm"], r"vision-language model; the vLLM engine here serves text models only: use engine=hf"),
])
def test_mismatched_model_task_or_strategy_is_one_line_and_leaves_no_record(tmp_path, overrides, message):
    from harness.runner import run_cell

    with pytest.raises(HarnessError, match=message):
        run_cell(compose(*COMMON, f"runs_dir={tmp_path}", *overrides))
    assert not list(tmp_path.rglob("record.json"))


def _mathvision_copy(root: Path, rows: int = 12) -> list[dict]:
    source = Path(__import__("os").environ["HARNESS_DATA_DIR"]) / "MathLLMs" / "MathVision" / "default"
    folder = root / "MathLLMs" / "MathVision" / "default"
    (folder / "images").mkdir(parents=True)
    kept = [json.loads(line) for line in (source / "testmini.jsonl").read_text().splitlines()[:rows]]
    for row in kept:
        shutil.copyfile(source / row["image"], folder / row["image"])
    (folder / "testmini.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


@pytest.mark.parametrize("damage, message", [
    ("missing", r"task mathvision: row 2 \(id \S+\) of MathLLMs/MathVision/default/testmini: its image .* does not "
                r"exist: copy the dataset's images/ folder beside"),
    ("garbled", r"task mathvision: row 2 \(id \S+\) of MathLLMs/MathVision/default/testmini: its image .* is not a "
                r"readable image .*: re-copy that file"),
])
def test_a_missing_or_unreadable_image_stops_the_run_before_any_work(tmp_path, monkeypatch, damage, message):
    from harness.runner import run_cell

    rows = _mathvision_copy(tmp_path / "data")
    image = tmp_path / "data" / "MathLLMs" / "MathVision" / "default" / rows[2]["image"]
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(b"not a picture")
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(HarnessError, match=message):
        run_cell(compose(*COMMON, f"runs_dir={tmp_path / 'runs'}", "strategy=base",
                         "+task.dataset_options={pool_size: 4}"))
    assert not list((tmp_path / "runs").rglob("record.json"))


def _mathvista_fixture(root: Path) -> list[dict]:
    """A few MathVista testmini rows in the Hub's fields, with small generated images (no copy of the dataset)."""
    from PIL import Image

    folder = root / "AI4Math" / "MathVista" / "default"
    (folder / "images").mkdir(parents=True)
    rows = []
    kinds = [("multi_choice", "text", ["3", "4", "5", "6"], "5", None, None),
             ("free_form", "integer", None, "12", None, None),
             ("free_form", "float", None, "1.5", 1, None),
             ("free_form", "float", None, "0.25", 2, None),
             ("free_form", "list", None, "[2, 3]", None, None),
             ("multi_choice", "text", ["red", "blue"], "blue", None, None)]
    for pid, (qtype, atype, choices, answer, precision, unit) in enumerate(kinds * 2, 1):
        Image.new("RGB", (32 + pid, 24), (pid * 20, 100, 50)).save(folder / "images" / f"{pid}.png")
        question = f"Question {pid}: what does the figure show?"
        query = f"Hint: answer as asked.\nQuestion: {question}"
        if choices:
            query += "\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
        rows.append({"pid": str(pid), "question": question, "image": f"images/{pid}.png", "choices": choices,
                     "unit": unit, "precision": precision, "answer": answer, "question_type": qtype,
                     "answer_type": atype, "metadata": {"split": "testmini"}, "query": query})
    (folder / "testmini.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_mathvista_loads_the_hubs_rows_with_their_images_and_scores_by_answer_type(tmp_path, monkeypatch):
    from PIL import Image

    from harness.tasks import TaskHandle

    rows = _mathvista_fixture(tmp_path)
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    task = TaskHandle.from_cfg(compose("task=mathvista", "+task.dataset_options={pool_size: 4}").task)
    assert task.multimodal and task.generative
    assert task.pool_info.carved and task.pool_info.carve_seed == 1234
    assert task.pool_info.n_pool + task.pool_info.n_eval == len(rows)
    doc = task.eval_docs[0]
    assert task.task.doc_to_text(doc) == "<image>\n" + doc["query"]
    (image,) = task.task.doc_to_image(doc)
    assert isinstance(image, Image.Image) and image.size == (32 + int(doc["pid"]), 24)
    results = task.task.process_results
    by_pid = {d["pid"]: d for d in task.pool_docs + task.eval_docs}
    assert results(by_pid["1"], ["The answer is (C)."])["accuracy_rules"] == 1.0  # letter C -> "5"
    assert results(by_pid["2"], ["So the total is 12."])["accuracy_rules"] == 1.0
    assert results(by_pid["3"], ["The answer is 1.53"])["accuracy_rules"] == 1.0  # precision 1: 1.5
    assert results(by_pid["4"], ["The answer is 0.3"])["accuracy_rules"] == 0.0  # precision 2: 0.25 is not 0.3
    assert results(by_pid["6"], ["The answer is blue."])["accuracy_rules"] == 1.0
    assert results(by_pid["6"], [""]) == {"accuracy_rules": 0.0, "answered": 0.0}


def test_a_hub_row_image_becomes_a_cached_file_and_the_row_plain_json(tmp_path, monkeypatch):
    from PIL import Image

    from harness.data import SplitRef, hub_row

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    picture = Image.new("RGB", (5, 7), (1, 2, 3))
    row = hub_row({"pid": "9", "image": "images/9.jpg", "decoded_image": picture}, SplitRef("AI4Math/MathVista",
                                                                                              None, "testmini"), 8)
    json.dumps(row)
    path = Path(row["decoded_image"])
    assert path == tmp_path / "cache" / "images" / "AI4Math/MathVista" / "default" / "testmini" / "8_decoded_image.png"
    with Image.open(path) as saved:
        assert saved.size == (5, 7) and saved.getpixel((0, 0)) == (1, 2, 3)
    assert row["image"] == "images/9.jpg" and row["pid"] == "9"


def test_the_papers_multimodal_preset_fits_qwen25_vl_3b_language_model_only():
    """Qwen2.5-VL-3B-Instruct's published shapes, built on the meta device (no weights): DnD's brief counts its
    language model's r16 LoRA at width 256 as 203 tokens per layer x 36 layers = 7,308 (research/dnd.md §2)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from baselines.dnd.config import PRESETS, presets_fitting
    from harness.flops import ModelShape
    from harness.vision import lora_module_names

    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31]))
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert len(lora_module_names(model, PRESETS["qwen2.5-vl-3b"].targets)) == 36 * 7
    assert PRESETS["qwen2.5-vl-3b"].n_tokens == 7308 and presets_fitting(model) == ["qwen2.5-vl-3b"]
    shape = ModelShape.of(model)
    assert (shape.n_layers, shape.vision_layers, shape.merge, shape.patch_size) == (36, 32, 4, 14)
