"""The recipe search's generators: a decoder variant trained on lib.py's library through the harness's own
meta-training (baselines/dnd/generator.py), with its seen-task reconstruction; with `eval`, the LoRA it generates
from 16 seen prompts of each task scored on that task's 100 checked items. Appends a row to out/results.jsonl.

    python gen.py LIBRARY TASKS VARIANT[+mean] STEPS LR [eval]
"""
import json, sys, time
from dataclasses import replace
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import compose
from baselines.dnd.config import GeneratorPreset, MetaTrainSettings
from baselines.dnd.encoder import load_encoder
from baselines.dnd.generator import _train, prompt_bank, write_adapter
from baselines.dnd.library import LibraryEntry, task_handle
from baselines.dnd.tokenizer import LoraTokenizer
from harness.costs import PhaseCost

torch.set_num_threads(2)
lib = Path(sys.argv[1]); tasks = sys.argv[2].split(","); variant = sys.argv[3]; steps = int(sys.argv[4])
lr = float(sys.argv[5]); evaluate = len(sys.argv) > 6 and sys.argv[6] == "eval"
QV = ("q_proj", "v_proj")
VARIANTS = {
    "tiny": dict(features=((16, 48, 384), (16, 16, 128), (32, 10, 194), (300, 10, 194)), kernel=(1, 3, 1)),
    "wide": dict(features=((16, 48, 384), (32, 16, 256), (256, 10, 194), (300, 10, 194)), kernel=(1, 3, 3)),
    "w64": dict(features=((16, 48, 384), (32, 16, 128), (80, 10, 66), (900, 10, 66)), kernel=(1, 3, 3), width=64),
    "w96": dict(features=((16, 48, 384), (32, 16, 128), (128, 10, 98), (600, 10, 98)), kernel=(1, 3, 3), width=96),
    "wide1": dict(features=((16, 48, 384), (32, 16, 256), (256, 10, 194), (300, 10, 194)), kernel=(1, 3, 1)),
}
name, _, opt = variant.partition("+")
v = VARIANTS[name]
W = v.get("width", 192)
preset = GeneratorPreset(variant, v["features"], v["kernel"], 16, 48, 8, W, targets=QV, mean_base=(opt == "mean"))
preset.check()
entries = []
for t in tasks:
    f = lib / t
    cps = sorted((f / "trajectory").iterdir())
    entries.append(LibraryEntry(t, t, f, cps, f / "adapter", PhaseCost(phase="collect")))
tok = LoraTokenizer.from_state_dict(entries[0].state(), W)
assert tok.n_tokens == preset.n_tokens, tok.n_tokens
handles = {t: task_handle(t) for t in tasks}
enc = load_encoder("all-MiniLM-L6-v2")
ms = MetaTrainSettings(steps=steps, batch_size=4, lr=lr, weight_decay=0.1, warmup_steps=1, grad_clip=1.0,
                       condition_noise=1e-4, target_noise=1e-5, seed=999, log_every=10)
work = Path(sys.argv[0]).resolve().parent / "out" / "gens" / f"{variant}_{steps}_{lr:g}"
work.mkdir(parents=True, exist_ok=True)
t0 = time.time()
tg = _train(preset, enc, entries, handles, tok, ms, 256, "k", work, work, torch.device("cpu"), False, print)
mins = (time.time() - t0) / 60
rec = tg.info["reconstruction"]
nparams = sum(p.numel() for p in tg.generator.parameters())
row = {"variant": variant, "steps": steps, "lr": lr, "params": nparams, "minutes": round(mins, 2),
       "s_per_step": round(tg.cost.wall_s / steps, 3),
       "loss": [tg.info["loss_curve"][0][1], tg.info["loss_curve"][-1][1]], "label": rec["label"],
       "seen_cos": round(rec["seen_cosine"], 3), "held_cos": rec["held_back_cosine"] and round(rec["held_back_cosine"], 3),
       "to_mean": round(rec["cosine_to_library_mean"], 3), "distinct": round(rec["distinct"], 3),
       "per_task": {t: round(r["seen"]["cosine"], 3) for t, r in rec["tasks"].items()}}
print(json.dumps(row), flush=True)
if evaluate:
    from harness.evaluate import evaluate_adaptation
    from harness.models import load_model
    from harness.strategy import Adaptation
    m = load_model(compose("model=smollm2-135m").model, torch.device("cpu"), torch.float32)
    acc = {}
    for e in entries:
        h = handles[e.task]
        prompts = prompt_bank(h, 256, 999)[:16]
        with torch.no_grad():
            out = tg.generator(enc.encode(prompts, 48)[None])[0]
        ad = write_adapter(tok.detokenize(out), e.adapter, work / f"adapter_{e.task}")
        res = evaluate_adaptation(m.model, m.tokenizer, h, Adaptation(kind="adapter", adapter_dir=str(ad)),
                                  h.eval_indices(100, 0), 16, torch.device("cpu"), count_flops=False)
        own = json.loads((lib / e.task / "own.json").read_text())
        acc[e.task] = {"base": own["base"], "lora": own["lora"], "gen": res.metrics["acc"]}
    row["acc"] = acc
    print(json.dumps(row), flush=True)
with open(Path(sys.argv[0]).resolve().parent / "out" / "results.jsonl", "a") as fh:
    fh.write(json.dumps(row) + "\n")
