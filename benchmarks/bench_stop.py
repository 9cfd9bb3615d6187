"""Generation's stop check: lm-eval's (decode every row's last tokens on the host, every step, once per stop
string; the batch ends only when one string has stopped every row) against ours (`stop_strings_criterion`:
matched on the device, each row finished on its own when any string appears).

Two tables:
1. The check alone, per call, on a [batch, prompt + generated] tensor of real GSM8K prompt tokens and
   SmolLM2 output tokens, with GSM8K's four stop strings: microseconds per step.
2. End to end on GSM8K prompts (the task's stop strings and max_gen_toks): lm-eval's own `HFLM.generate_until`
   against ours (a cell's evaluation path, metered), interleaved, median; the texts must be identical, and
   ours reports the tokens it generated.

    HARNESS_DATA_DIR=../shared/data python benchmarks/bench_stop.py [--items 8] [--repeats 3] [--threads 1]
        [--stops 'Question:|\n\n|.'] [--skip-check]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STOPS = ["Question:", "</s>", "<|im_end|>", "\n\n\n"]  # tasks/math/gsm8k.yaml


def prompts(n: int) -> list[str]:
    root = Path(os.environ.get("HARNESS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    rows = [json.loads(line) for line in (root / "openai/gsm8k/main/test.jsonl").read_text().split("\n") if line]
    return [f"Question: {r['question']}\nAnswer:" for r in rows[:n]]


def check_alone(tok, batch: int, generated: int, calls: int) -> None:
    from lm_eval.models.utils_hf import stop_sequences_criteria

    from harness.evaluate import stop_strings_criterion

    enc = tok(prompts(batch), return_tensors="pt", padding=True)["input_ids"]
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([enc, torch.randint(100, 40000, (batch, generated), generator=g)], dim=1)
    width = enc.shape[1]
    arms = {"lm-eval": stop_sequences_criteria(tok, STOPS, width, batch),
            "ours": stop_strings_criterion(tok, STOPS, width)}
    print(f"\nThe stop check alone: {batch} rows, {width}-token prompts + {generated} generated, {len(STOPS)} stop "
          f"strings, {calls} calls, CPU, {torch.get_num_threads()} threads\n")
    print("| check | µs per step |")
    print("|---|---|")
    for name, criterion in arms.items():
        criterion(ids, None)
        start = time.perf_counter()
        for _ in range(calls):
            criterion(ids, None)
        print(f"| {name} | {(time.perf_counter() - start) / calls * 1e6:.0f} |", flush=True)


def end_to_end(loaded, items: int, batch: int, repeats: int, stops: list[str]) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from harness.costs import PhaseMeter
    from harness.evaluate import metered_lm_class
    from harness.flops import ModelShape

    model, tok = loaded.model, loaded.tokenizer
    kwargs = {"until": stops, "max_gen_toks": 256, "do_sample": False}

    def requests():
        return [Instance(request_type="generate_until", doc={}, arguments=(c, dict(kwargs)), idx=i)
                for i, c in enumerate(prompts(items))]

    def plain():
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch)
        return lm.generate_until(requests(), disable_tqdm=True), None

    def ours():
        meter = PhaseMeter("inference", "cpu")
        lm = metered_lm_class()(pretrained=model, tokenizer=tok, batch_size=batch, meter=meter,
                                shape=ModelShape.of(model))
        with meter:
            texts = lm.generate_until(requests(), disable_tqdm=True)
        return texts, meter.cost.details["generated_tokens"]

    arms = {"lm-eval": plain, "ours": ours}
    times, out = {a: [] for a in arms}, {}
    for r in range(repeats):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            start = time.perf_counter()
            out[name] = arms[name]()
            times[name].append(time.perf_counter() - start)
    same = "identical" if out["ours"][0] == out["lm-eval"][0] else "DIFFER"
    rate = {a: items / statistics.median(t) for a, t in times.items()}
    print(f"\nGSM8K end to end: {items} prompts, batch {batch}, max_gen_toks 256, greedy, stop strings {stops!r}, "
          f"{repeats} repeats interleaved (median)\n")
    print("| path | items/s | vs lm-eval | tokens generated (ours: counted; texts) |")
    print("|---|---|---|---|")
    print(f"| lm-eval `HFLM.generate_until` | {rate['lm-eval']:.3f} | 1.00x | — |")
    print(f"| ours | {rate['ours']:.3f} | {rate['ours'] / rate['lm-eval']:.2f}x | {out['ours'][1]} ({same}) |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--stops", default=None, help="'|'-separated stop strings for the end-to-end case "
                        "(default: GSM8K's own); escapes like \\n are read")
    parser.add_argument("--skip-check", action="store_true", help="only the end-to-end case")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from harness.cli import compose_config
    from harness.models import load_model
    from harness.tasks import quiet_lm_eval

    quiet_lm_eval()
    loaded = load_model(compose_config(["model=smollm2-135m"]).model, torch.device("cpu"), torch.float32)
    if not args.skip_check:
        for batch in (8, 64):
            check_alone(loaded.tokenizer, batch, 128, args.calls)
    stops = STOPS if args.stops is None else [x.encode().decode("unicode_escape") for x in args.stops.split("|")]
    end_to_end(loaded, args.items, args.batch_size, args.repeats, stops)
    print("\nreproduce: HARNESS_DATA_DIR=../shared/data python benchmarks/bench_stop.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
