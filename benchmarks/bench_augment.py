"""Global augmentation's throughput with and without the shared-prefix KV cache (icl_aug_ft's augment phase).

    python benchmarks/bench_augment.py [--rounds 3] [--documents 6] [--new 32] [--task gen_reversals]
                                       [--model smollm2-135m] [--shard-tokens 1500] [--threads N]

Each round augments the same `--documents` pool documents of the task against one shard of the pool (at most
`--shard-tokens` tokens of documents in context, as `strategy.augment.shard_tokens`) twice, interleaved, in
alternating order: once with the shard's prefix encoded once into a KV cache that every document's continuation
reads (`prefix_cache: true`), once re-encoding it for every document. Decoding is greedy, so both write the same
tokens (checked). Reported, median over rounds: generated tokens/s, positions processed/s, measured FLOPs and
the ratio of the two paths.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--documents", type=int, default=6)
    parser.add_argument("--new", type=int, default=32, help="tokens generated per document at most")
    parser.add_argument("--task", default="gen_reversals")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--shard-tokens", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from baselines import augmentation as aug
    from harness.cli import compose_config
    from harness.costs import PhaseMeter
    from harness.models import load_model, resolve_device, resolve_dtype
    from harness.tasks import TaskHandle

    device = resolve_device("auto")
    cfg = compose_config([f"model={args.model}", f"task={args.task}"])
    loaded = load_model(cfg.model, device, resolve_dtype("auto", device))
    task = TaskHandle.from_cfg(cfg.task)
    prompts = aug.Prompts.load("knowledge")
    units = [aug.Unit(i, *(x.strip() for x in task.labeled_example(d))) for i, d in enumerate(task.pool_docs)]

    def once(cache: bool):
        with PhaseMeter("augment", device) as meter:
            decoder = aug.Decoder(loaded.model, loaded.tokenizer, meter, chat=True, name=args.model)
            work = aug.plan(decoder, prompts, [], units, ("global",), True, 1, 32, args.new, 1, args.shard_tokens,
                            cache, seed=0)
            prefix, items = work.shards[0]  # one shard, its first documents: the same work for both paths
            work = aug.AugmentPlan([], [(prefix, items[:args.documents])], 0.0, 0.0, 1, 32, args.new)
            start = time.perf_counter()
            raw, stats = aug.run(decoder, prompts, work, 0.0, cache, seed=0, progress=False)
            seconds = time.perf_counter() - start
        return {"seconds": seconds, "generated": stats.generated_tokens, "positions": meter.cost.tokens,
                "flops": meter.cost.flops_measured, "prefix": len(prefix), "texts": [t for *_, t in raw]}

    rows = {True: [], False: []}
    for r in range(args.rounds):
        for cache in ((True, False) if r % 2 == 0 else (False, True)):
            rows[cache].append(once(cache))
    assert rows[True][0]["texts"] == rows[False][0]["texts"], "the cache changed what greedy decoding wrote"

    def med(cache, key):
        return statistics.median(x[key] for x in rows[cache])

    print(f"\n{args.model} on {device}, torch threads {torch.get_num_threads()}: {args.documents} documents against "
          f"one shard prefix of {rows[True][0]['prefix']} tokens, <= {args.new} new tokens each, {args.rounds} "
          "rounds (medians)\n")
    print("| path | seconds | generated tokens/s | positions/s | measured FLOPs |")
    print("|---|---|---|---|---|")
    for cache, name in ((True, "prefix cached once"), (False, "prefix re-encoded per document")):
        seconds = med(cache, "seconds")
        print(f"| {name} | {seconds:.2f} | {med(cache, 'generated') / seconds:.1f} | "
              f"{med(cache, 'positions') / seconds:.0f} | {med(cache, 'flops'):.3g} |")
    speed = statistics.median(b["seconds"] / a["seconds"] for a, b in zip(rows[True], rows[False]))
    flops = med(False, "flops") / med(True, "flops")
    print(f"\ncached vs re-encoded: {speed:.2f}x the generated tokens/s (median of per-round ratios), "
          f"{flops:.2f}x fewer FLOPs")
    print(f"\nreproduce: python benchmarks/bench_augment.py --rounds {args.rounds} --documents {args.documents} "
          f"--new {args.new} --task {args.task} --model {args.model} --shard-tokens {args.shard_tokens}")


if __name__ == "__main__":
    main()
