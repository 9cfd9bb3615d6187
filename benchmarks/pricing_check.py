"""How well the per-query price that budgets use matches what evaluation measured, cell by cell.

For every finished cell under RUNS_DIR: the predicted per-query FLOPs (analytic, on 64 pool queries, at the
expected output length, `per_query.predicted`) against the measured per-query FLOPs (FlopCounterMode on the
evaluated items), and, for an adaptation that adds to every query (ICL demonstrations, an unmerged adapter),
its predicted extra against the extra re-priced on the evaluated items after evaluation, and the price a
prefill-only estimate (one forward over the prompt, no decoding) would have put on it.

    .venv/bin/python benchmarks/pricing_check.py runs_mc
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from harness import store
from harness.flops import ModelShape
from harness.models import load_model
from harness.pricing import OutputLength, QueryPricer
from harness.runner import use_chat_template
from harness.tasks import TaskHandle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path)
    args = parser.parse_args()
    rows, models = [], {}
    for folder, record in store.iter_records(args.runs_dir):
        cfg = OmegaConf.create(record["config"])
        name = cfg.model.name
        if name not in models:
            models[name] = load_model(cfg.model, torch.device("cpu"), torch.float32)
        loaded = models[name]
        task = TaskHandle.from_cfg(cfg.task)
        if use_chat_template(cfg, task, loaded.tokenizer):
            task.use_chat(loaded.tokenizer)
        per_query, use = record["per_query"], record["adaptation"]["budget"]
        predicted = per_query.get("predicted") or {}
        after = use.get("after_eval") or {}
        adaptation = record["adaptation"]
        extra = adaptation.get("per_query_extra_flops", 0.0)
        prefill_only = 0.0
        if extra and task.generative:
            pricer = QueryPricer(task, loaded.tokenizer, ModelShape.of(loaded.model),
                                 OutputLength(predicted.get("gen_tokens") or 1.0, "record"))
            prefill_only = pricer.extra(adaptation.get("prefix"), adaptation.get("lora_params", 0), gen_tokens=1)
        rows.append((record["cell"]["task"], record["cell"]["strategy"], predicted.get("flops_analytic"),
                     per_query["flops_measured"], predicted.get("gen_tokens"), per_query.get("generated_tokens"),
                     extra, after.get("per_query_extra_on_eval_items"), prefill_only))
    print("| task | strategy | predicted FLOPs/query | measured | predicted / measured | expected gen tokens "
          "| measured | extra/query predicted | re-priced on eval items | prefill-only extra |")
    print("|" + "---|" * 10)
    fmt = lambda x: "—" if not x else f"{x:.3g}"  # noqa: E731
    for task, strategy, pred, meas, g_exp, g_meas, extra, actual, prefill in sorted(rows):
        ratio = f"{pred / meas:.3f}" if pred and meas else "—"
        print(f"| {task} | {strategy} | {fmt(pred)} | {fmt(meas)} | {ratio} | {fmt(g_exp)} | {fmt(g_meas)} "
              f"| {fmt(extra)} | {fmt(actual)} | {fmt(prefill)} |")
    print(f"\n{' '.join(['python', *sys.argv])}")


if __name__ == "__main__":
    main()
