"""The recipe search's library: q_proj/v_proj r8 LoRAs of SmolLM2-135M on each task, one shared initial A
(seed 0 for every task), a constant rate after warm-up, the last KEEP steps saved; then each final LoRA against
base on 100 of its own task's eval items (own.json).

    python lib.py TASKS STEPS KEEP LR TARGETS OUT
"""
import json, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import compose
from harness.models import load_model
from harness.trainer import LoraSettings, train_lora
from harness.budget import Budget, TrainingBudget
from harness.costs import PhaseMeter
from harness.evaluate import evaluate_adaptation
from harness.strategy import Adaptation
from baselines.dnd.library import task_handle

torch.set_num_threads(2)
tasks = sys.argv[1].split(",")
steps, keep, lr = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
targets = tuple(sys.argv[5].split(","))
out = Path(sys.argv[6])
m = load_model(compose("model=smollm2-135m").model, torch.device("cpu"), torch.float32)
for name in tasks:
    t = task_handle(name)
    ex = [t.training_example(d) for d in t.sample_pool(None, 0)]
    s = LoraSettings(rank=8, alpha=16, dropout=0.0, target_modules=targets, lr=lr, warmup_frac=0.03,
                     schedule="constant", weight_decay=0.0, batch_size=4, max_length=256, max_steps=None,
                     checkpoint_every=1, checkpoint_start=steps - keep + 1)
    b = TrainingBudget(Budget("s", "steps", steps, 0, "excluded", "recompute"))
    t0 = time.time()
    with PhaseMeter("collect", torch.device("cpu")) as meter:
        r = train_lora(m.model, m.tokenizer, ex, b, s, out / name, meter, seed=0, progress=False)
    tt = time.time() - t0
    idx = t.eval_indices(100, 0)
    base = evaluate_adaptation(m.model, m.tokenizer, t, Adaptation(kind="none"), idx, 16, torch.device("cpu"), count_flops=False)
    lora = evaluate_adaptation(m.model, m.tokenizer, t, Adaptation(kind="adapter", adapter_dir=r.adapter_dir), idx, 16, torch.device("cpu"), count_flops=False)
    def accs(res):
        return [s_["acc"] for s_ in res.samples]
    row = {"task": name, "train_s": tt, "loss0": r.losses[0], "loss_end": sum(r.losses[-20:]) / 20,
           "base": base.metrics["acc"], "lora": lora.metrics["acc"], "base_s": accs(base), "lora_s": accs(lora)}
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("_s") or k == "train_s"}), flush=True)
    (out / name / "own.json").write_text(json.dumps(row))
