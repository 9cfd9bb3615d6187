"""Generation latency of T2L's hypernetwork (one description embedding → a whole LoRA), per preset and variant.

    python benchmarks/bench_t2l.py [--presets smollm2 tiny-random] [--variants L M S] [--emb 384] [--device auto]
        [--dtype auto] [--warmup 3] [--iters 20] [--threads N] [--out FILE]
    python benchmarks/bench_t2l.py --sft-model smollm2-135m [--sft-steps 5] [--variants M]   # SFT step time

`--sft-model` times instead one SFT meta-training step (`tasks_per_batch` = 6 tasks, one pool example each, the
generated LoRA applied functionally to the frozen model, forward and backward): the model's t2l_preset, the
packaged MiniLM descriptions, HARNESS_DATA_DIR's commonsense pools; FLOPs analytic per step.

Random hypernetwork weights and a random embedding (latency does not depend on the values); eval mode. FLOPs:
analytic (`HyperModulator.flops`), checked once against torch's FlopCounterMode (harness.flops). `--emb` is the
description encoder's width (384: the packaged all-MiniLM-L6-v2; 1024: the paper's gte-large). bf16 runs under
torch.autocast (weights fp32). The encoder itself is not timed (one sentence: see bench_dnd.py --with-encoder).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["tiny-random", "smollm2"])
    parser.add_argument("--variants", nargs="+", default=["L", "M", "S"])
    parser.add_argument("--emb", type=int, default=384)
    parser.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto: bf16 (autocast) on cuda, fp32 on cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--sft-model", default=None, help="time SFT meta-training steps on this model config")
    parser.add_argument("--sft-steps", type=int, default=5)
    args = parser.parse_args()
    if args.sft_model:
        return sft_steps(args)

    import torch

    from baselines.t2l.config import get_preset
    from baselines.t2l.model import HyperModulator
    from harness.flops import flop_counter

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def autocast():
        return contextlib.nullcontext() if dtype == "fp32" else torch.autocast(device.type, dtype=torch.bfloat16)

    def time_one(name: str, variant: str) -> dict:
        p = get_preset(name)
        torch.manual_seed(0)
        with device:
            net = HyperModulator(p.shape, args.emb, variant, p.latent, p.head_in).eval()
        emb = torch.randn(1, args.emb, device=device)

        def forward():
            with torch.no_grad(), autocast():
                return net(emb)

        with flop_counter() as counter:
            forward()
        for _ in range(args.warmup):
            forward()
        times = []
        for _ in range(args.iters):
            sync()
            start = time.perf_counter()
            forward()
            sync()
            times.append(time.perf_counter() - start)
        ms = 1e3 * statistics.median(times)
        analytic = net.flops()
        return {"preset": name, "variant": variant,
                "params (M)": f"{sum(t.numel() for t in net.parameters()) / 1e6:.2f}",
                "LoRA weights (M)": f"{p.shape.lora_params / 1e6:.2f}",
                "analytic GFLOP": f"{analytic / 1e9:.4f}",
                "measured / analytic": f"{counter.get_total_flops() / analytic:.4f}",
                "median ms": f"{ms:.2f}", "GFLOP/s": f"{analytic / ms / 1e6:.1f}"}

    rows = []
    for name in args.presets:
        for variant in args.variants:
            rows.append(time_one(name, variant))
            if device.type == "cuda":
                torch.cuda.empty_cache()

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"T2L hypernetwork, one LoRA from one {args.emb}-d description embedding: {where}, {dtype}"
             f"{' (autocast)' if dtype != 'fp32' else ''}, torch {torch.__version__}, median of {args.iters} after "
             f"{args.warmup} warm-up", ""]
    cols = list(rows[0])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    lines += ["", "reproduce: python benchmarks/bench_t2l.py " + " ".join(sys.argv[1:])]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def sft_steps(args) -> None:
    """Median wall-clock of SFT meta-training steps (after one warm-up step) per variant, on CPU."""
    import random

    import torch

    from baselines.dnd.library import task_handle
    from baselines.t2l import descriptions as desc
    from baselines.t2l.config import get_preset
    from baselines.t2l.hypernet import SftData, _bias_hyperinit, _sft_step, build_net
    from harness.cli import compose_config
    from harness.models import load_model
    from harness.trainer import LoraSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config([f"model={args.sft_model}", "strategy=t2l_sft"])
    loaded = load_model(cfg.model, torch.device("cpu"), torch.float32)
    preset = get_preset(str(cfg.model.t2l_preset))
    tasks = ["arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "piqa"]
    handles = {t: task_handle(t) for t in tasks}
    examples = {t: [handles[t].training_example(d) for d in handles[t].sample_pool(64, 0)] for t in tasks}
    lora = LoraSettings(rank=preset.shape.rank, alpha=2 * preset.shape.rank, dropout=0.0,
                        target_modules=preset.shape.names, lr=1e-4, warmup_frac=0.0, schedule="constant",
                        weight_decay=0.0, batch_size=1, max_length=256, max_steps=None, checkpoint_every=None,
                        checkpoint_start=None)
    encoder = desc.DescriptionEncoder("all-MiniLM-L6-v2", torch.device("cpu"))
    embs = {t: encoder.embed(list(desc.load(t).train))[0] for t in tasks}
    rows = []
    for variant in args.variants:
        from dataclasses import replace

        from baselines.t2l.config import T2LSettings
        from harness.strategy_settings import settings_from

        hyper = replace(settings_from(T2LSettings, cfg.strategy).hypernet, variant=variant)
        torch.manual_seed(0)
        net = build_net(preset, hyper, encoder.dim)
        sft = SftData(loaded.model, loaded.tokenizer, examples, lora)
        _bias_hyperinit(net, sft)
        prepare, loss_of, stop = _sft_step(net, embs, sft, torch.device("cpu"))
        opt = torch.optim.AdamW(net.parameters(), lr=hyper.lr)
        rng, times, flops = random.Random(0), [], []
        try:
            for step in range(args.sft_steps + 1):
                _, payload, analytic = prepare(rng.sample(tasks, hyper.tasks_per_batch), rng)
                start = time.perf_counter()
                loss_of(payload).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step:  # the first step warms up
                    times.append(time.perf_counter() - start)
                    flops.append(analytic)
        finally:
            stop()
        s = statistics.median(times)
        rows.append({"model": args.sft_model, "preset": preset.name, "variant": variant,
                     "tasks per step": str(hyper.tasks_per_batch), "median s / step": f"{s:.2f}",
                     "analytic GFLOP / step": f"{statistics.fmean(flops) / 1e9:.1f}",
                     "GFLOP/s": f"{statistics.fmean(flops) / s / 1e9:.1f}"})
    lines = [f"T2L SFT meta-training step (CPU, {torch.get_num_threads()} threads, fp32, torch {torch.__version__}; "
             f"median of {args.sft_steps} steps after one warm-up; pool examples up to 256 tokens)", ""]
    cols = list(rows[0])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    lines += ["", "reproduce: python benchmarks/bench_t2l.py " + " ".join(sys.argv[1:])]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
