"""How alike the library tasks' mean LoRAs are, and how far each trajectory moves (weight updates dW = BA).

    python libstats.py LIBRARY TASKS
"""
import sys, math, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from pathlib import Path
from baselines.dnd.diagnostics import _factors, mean_state, delta_inner
lib = Path(sys.argv[1]); tasks = sys.argv[2].split(",")
means = {}; finals = {}; spreads = {}
def cos(x, y): return delta_inner(x, y) / math.sqrt(delta_inner(x, x) * delta_inner(y, y))
from safetensors.torch import load_file
for t in tasks:
    cps = sorted((lib / t / "trajectory").iterdir())
    states = [load_file(str(c / "adapter_model.safetensors")) for c in cps]
    means[t] = _factors(mean_state(states))
    f = [_factors(s) for s in states]
    spreads[t] = (cos(f[0], f[-1]), sum(cos(x, means[t]) for x in f) / len(f))
lm = _factors(mean_state([mean_state([load_file(str(c / "adapter_model.safetensors")) for c in sorted((lib / t / "trajectory").iterdir())]) for t in tasks]))
for t in tasks:
    print(t, "cos(task mean, library mean)=%.3f" % cos(means[t], lm), "first-vs-last ckpt cos=%.3f, mean ckpt-to-taskmean cos=%.3f" % spreads[t],
          " ".join("%s:%.2f" % (u[:4], cos(means[t], means[u])) for u in tasks))
