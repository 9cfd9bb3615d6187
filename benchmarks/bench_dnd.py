"""Generation latency of DnD's generator (one forward pass: condition → LoRA parameter tokens), per preset.

    python benchmarks/bench_dnd.py [--presets tiny-random smollm2-small] [--device auto]
        [--dtype auto] [--warmup 3] [--iters 10] [--threads N] [--with-encoder] [--peak-tflops 989] [--out FILE]

Random generator weights and a random condition (1, N, L, 384): latency does not depend on the values.
The paper presets (qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-1.5b-code, qwen2.5-7b) are GPU-sized: name them
on a GPU only. bf16 runs under torch.autocast (weights stay fp32, convolutions run in bf16). FLOPs:
analytic (`Generator.flops`) and measured once by torch's FlopCounterMode (harness.flops); FLOP/s uses
the analytic count. `--with-encoder` also times the frozen MiniLM encoding of N prompts at L tokens
(fp32, presets with L <= 512).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

PROMPT = ("Question: {i}. A student mixes baking soda and vinegar in a sealed bag and the bag puffs up. "
          "Which gas was produced? Choices: oxygen, carbon dioxide, hydrogen, nitrogen. Answer:")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["tiny-random", "smollm2-small"])
    parser.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto: bf16 (autocast) on cuda, fp32 on cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--with-encoder", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense peak at --dtype (e.g. 989 for H100 SXM bf16): adds a %%-of-peak column")
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args()

    import torch

    from baselines.dnd.config import get_preset
    from baselines.dnd.model import Generator
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
        if dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def median_ms(fn, warmup: int, iters: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    rows = []
    for name in args.presets:
        p = get_preset(name)
        torch.manual_seed(0)
        with device:  # initialised where it runs (the paper presets are 1.1-1.9 B parameters)
            gen = Generator(p).eval()
        cond = torch.randn(1, p.n_prompts, p.prompt_tokens, p.encoder_dim, device=device)

        def forward():
            with torch.no_grad(), autocast():
                return gen(cond)

        with flop_counter() as counter:
            out = forward()
        assert out.shape == (1, p.n_tokens, p.rank + 2, p.width + 2), out.shape
        ms = median_ms(forward, args.warmup, args.iters)
        analytic, measured = gen.flops(), counter.get_total_flops()
        decoder = gen.decoder.n_params() / 1e6
        proj = sum(x.numel() for x in gen.projection.parameters()) / 1e6 if gen.projection is not None else 0.0
        row = {"preset": name, "condition N×L×D": f"{p.n_prompts}×{p.prompt_tokens}×{p.encoder_dim}",
               "tokens out": f"{p.n_tokens}×{p.rank + 2}×{p.width + 2}",
               "params (M)": f"{decoder:.2f}" + (f" + {proj:.2f} proj" if proj else ""),
               "analytic GFLOP": f"{analytic / 1e9:.3f}", "measured / analytic": f"{measured / analytic:.4f}",
               "median ms": f"{ms:.2f}", "GFLOP/s": f"{analytic / ms / 1e6:.1f}"}
        if args.peak_tflops:
            row["% of peak"] = f"{100 * analytic / ms / 1e9 / args.peak_tflops:.1f}"
        if args.with_encoder:
            row["encoder ms"] = "n/a (L > 512)"
            if p.prompt_tokens <= 512:
                from baselines.dnd.encoder import load_encoder

                encoder = load_encoder("all-MiniLM-L6-v2", str(device))
                prompts = [PROMPT.format(i=i) for i in range(p.n_prompts)]
                row["encoder ms"] = f"{median_ms(lambda: encoder.encode(prompts, p.prompt_tokens), 1, args.iters):.2f}"
        rows.append(row)
        del gen, cond, out
        if device.type == "cuda":
            torch.cuda.empty_cache()

    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    lines = [f"DnD generator, one forward pass (batch 1): {where}, {dtype}"
             f"{' (autocast)' if dtype != 'fp32' else ''}, torch {torch.__version__}, "
             f"median of {args.iters} after {args.warmup} warm-up", ""]
    cols = list(rows[0])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    lines += ["", "reproduce: python benchmarks/bench_dnd.py " + " ".join(sys.argv[1:])]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
