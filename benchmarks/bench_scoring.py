"""Items/s of the two log-likelihood scorers (engine.scorer): shared_context against lm_eval's per-pair path.

    python benchmarks/bench_scoring.py [--items 32] [--icl-items 6] [--shots 16] [--repeats 5] [--batch-size 8]
                                       [--cases zero_shot,icl]

Same cached SmolLM2 (float32, CPU), same items, same batch size, same run: ARC-Easy 0-shot, and
ARC-Challenge with a `--shots`-demonstration ICL prefix (drawn by the icl strategy from the task's pool,
prepended through the description, as a cell does). The scorers alternate order each repeat; the table
shows the median items/s and the ratio, and checks that both gave the same accuracy and log likelihoods.
On a shared or loaded machine read the ratios, not the absolute rates.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--icl-items", type=int, default=6)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cases", default="zero_shot,icl", help="which of zero_shot,icl to run")
    args = parser.parse_args()

    import torch
    from omegaconf import OmegaConf

    from harness.budget import Budget
    from harness.cli import compose_config
    from harness.evaluate import evaluate_adaptation
    from harness.models import load_model
    from harness.strategy import AdaptContext, Adaptation, get_strategy
    from harness.tasks import TaskHandle, quiet_lm_eval

    quiet_lm_eval()
    loaded = load_model(compose_config(["model=smollm2-135m"]).model, torch.device("cpu"), torch.float32)
    easy = TaskHandle.from_cfg(compose_config(["task=arc_easy"]).task)
    challenge = TaskHandle.from_cfg(compose_config(["task=arc_challenge"]).task)
    with tempfile.TemporaryDirectory() as workdir:
        icl = get_strategy("icl").adapt(AdaptContext(
            model=loaded.model, tokenizer=loaded.tokenizer, task=challenge,
            budget=Budget("free", "steps", 1, 100, "amortized", "cached"),
            settings=compose_config(["strategy=icl", f"strategy.shots={args.shots}"]).strategy, seed=0,
            workdir=workdir, device=torch.device("cpu"), progress=False))
    cases = [(f"ARC-Easy 0-shot, {args.items} items", easy, Adaptation(kind="none"), easy.eval_indices(args.items, 0)),
             (f"ARC-Challenge {icl.labels_used}-shot ICL, {args.icl_items} items", challenge, icl,
              challenge.eval_indices(args.icl_items, 0))]

    def run(task, adaptation, indices, scorer):
        engine = OmegaConf.create({"name": "hf", "scorer": scorer})
        start = time.perf_counter()
        res = evaluate_adaptation(loaded.model, loaded.tokenizer, task, adaptation, indices, args.batch_size,
                                  torch.device("cpu"), engine_cfg=engine)
        return time.perf_counter() - start, res

    print(f"\nScorers: SmolLM2-135M (float32, CPU, {torch.get_num_threads()} threads), batch {args.batch_size}, "
          f"{args.repeats} repeats interleaved (median)\n")
    print("| case | lm_eval items/s | shared_context items/s | ratio | acc (both) | max abs Δ log-lik | FLOPs ratio |")
    print("|---|---|---|---|---|---|---|")
    wanted = args.cases.split(",")
    for label, task, adaptation, indices in [c for c, name in zip(cases, ("zero_shot", "icl")) if name in wanted]:
        run(task, adaptation, indices[:2], "shared_context")  # warm-up, not timed
        times = {"lm_eval": [], "shared_context": []}
        results = {}
        for r in range(args.repeats):
            order = ["lm_eval", "shared_context"] if r % 2 == 0 else ["shared_context", "lm_eval"]
            for scorer in order:
                seconds, results[scorer] = run(task, adaptation, indices, scorer)
                times[scorer].append(seconds)
        ref, ours = results["lm_eval"], results["shared_context"]
        delta = max(abs(a[0][0] - b[0][0]) for sa, sb in zip(ours.samples, ref.samples)
                    for a, b in zip(sa["resps"], sb["resps"]))
        same = "yes" if ours.metrics["acc"] == ref.metrics["acc"] else "NO"
        rate = {k: len(indices) / statistics.median(v) for k, v in times.items()}
        print(f"| {label} | {rate['lm_eval']:.2f} | {rate['shared_context']:.2f} | "
              f"{rate['shared_context'] / rate['lm_eval']:.2f}x | {ours.metrics['acc']:.3f} ({same}) | {delta:.1e} | "
              f"{ours.cost.flops_measured / ref.cost.flops_measured:.3f} |")
    print("\nreproduce: HARNESS_DATA_DIR=../shared/data python benchmarks/bench_scoring.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
