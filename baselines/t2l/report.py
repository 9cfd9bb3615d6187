"""T2L's report page: the held-out table of the two prompt-to-weights methods on one library.

Per held-out task and T2L configuration: T2L's generated adapters (mean ± std over its descriptions: the three
evaluation descriptions, or a control's strings) beside base, the library LoRAs' average (`dnd_member`), the
library mean and DnD (when their cells are in the same runs folder, same model, task and budget), the paired test
of T2L against base (per-item scores averaged over descriptions first), and the hypernetwork's seen-task check.
"""
from __future__ import annotations

import re
import statistics

from baselines.dnd.report import _cells, _fmt, paired

INTRO = ("Text-to-LoRA on held-out tasks, beside base, the library it learned from, the multi-task LoRA on that "
         "library's pools (its budget named when it differs), Arrow routing over the library LoRAs, ICL and DnD "
         "(same library). "
         "T2L: mean ± std over the adapters of its descriptions (`aligned`: the target's three evaluation "
         "descriptions, never trained on; `unaligned`: other tasks' descriptions; `random`: random letters). "
         "T2L − base and T2L − library mean: per-item scores averaged over descriptions, then the paired test of "
         "the harness (McNemar for 0/1 items). Hypernetwork: its seen-task check (cosine of the weight update "
         "generated from a training description with the task's library LoRA; label ok / underfit / collapsed; "
         "the share of the library LoRAs' gain over base it recovers on their own items).")


def t2l_table(records) -> str | None:
    cells = [c for c in _cells(records) if c["impl"] in ("t2l", "dnd", "dnd_control", "base", "multitask_lora",
                                                         "arrow", "icl")]
    configs = sorted({(c["model"], c["budget"], c["task"], c["variant"]) for c in cells if c["impl"] == "t2l"})
    if not configs:
        return None
    lines = ["| model | held-out task | T2L (variant, mode, descriptions) | base | library LoRAs: avg | library mean "
             "| multi-task LoRA | Arrow | ICL | DnD: mean ± std | T2L: mean ± std | adapters | T2L − base (p) "
             "| T2L − library avg | T2L − library mean (p) | hypernetwork: seen cos (label) |", "|" + "---|" * 16]
    for model, budget, task, variant in configs:
        mine = [c for c in cells if (c["model"], c["budget"], c["task"]) == (model, budget, task)]
        # the multi-task LoRA trains the whole library's worth of steps for one target: any budget, named
        others = [c for c in cells if (c["model"], c["task"]) == (model, task)]
        multitask = [c for c in others if c["impl"] == "multitask_lora"]
        # the controls score the same items whatever the budget: those of T2L's budget, else of a budget that has base
        ref_budget = budget if any(c["impl"] == "base" for c in mine) else \
            min((c["budget"] for c in others if c["impl"] == "base"), default=budget)
        ref = [c for c in others if c["budget"] == ref_budget]
        arrow = [c for c in ref if c["impl"] == "arrow"]
        icl = [c for c in ref if c["impl"] == "icl"]
        t2l = [c for c in mine if c["impl"] == "t2l" and c["variant"] == variant]
        base = [c for c in ref if c["impl"] == "base"]
        members = {c["details"].get("member_task"): c["acc"] for c in ref
                   if c["impl"] == "dnd_control" and c["mode"] == "member"}
        mean_cells = [c for c in ref if c["impl"] == "dnd_control" and c["mode"] == "mean"]
        mean = [c["acc"] for c in mean_cells]
        dnd = [c["acc"] for c in ref if c["impl"] == "dnd"]
        accs = [c["acc"] for c in t2l]
        avg = statistics.fmean(members.values()) if members else None
        t2l_mean = statistics.fmean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        delta, p = paired(base[:1], t2l)
        d_mean, p_mean = paired(mean_cells[:1], t2l)
        d = t2l[0]["details"]
        source = re.split(r"[:(]", d.get("description_source", ""))[0].strip()  # aligned, unaligned, random, custom
        label = f"{d.get('variant')}, {d.get('mode')}, {source}"
        if ref_budget != budget:
            label += f" ({budget}; controls under {ref_budget})"
        check = d.get("reconstruction") or {}
        hyper = f"{check['seen_cosine']:.3f} ({check['label']})" if check else "— (not checked)"
        if check.get("gain_recovered") is not None:
            hyper += f"; gain recovered {check['gain_recovered']:.0%}"
        mt_text = _fmt(multitask[0]["acc"] if multitask else None)
        if multitask and multitask[0]["budget"] != budget:
            mt_text += f" ({multitask[0]['budget']})"
        dnd_text = (f"{statistics.fmean(dnd):.3f} ± {_fmt(statistics.stdev(dnd) if len(dnd) > 1 else None)}"
                    if dnd else "—")
        lines.append(f"| {model} | {task} | {label} | {_fmt(base[0]['acc'] if base else None)} "
                     f"| {_fmt(avg)}{f' ({len(members)})' if members else ''} | {_fmt(mean[0] if mean else None)} "
                     f"| {mt_text} "
                     f"| {_fmt(arrow[0]['acc'] if arrow else None)} | {_fmt(icl[0]['acc'] if icl else None)} "
                     f"| {dnd_text} | {t2l_mean:.3f} ± {_fmt(std)} | {len(accs)} "
                     f"| {_fmt(delta, '+.3f')} ({_fmt(p, '.3g')}) "
                     f"| {_fmt(t2l_mean - avg, '+.3f') if avg is not None else '—'} "
                     f"| {_fmt(d_mean, '+.3f')} ({_fmt(p_mean, '.3g')}) | {hyper} |")
    seen = seen_task_table(cells)
    return "\n".join(lines) + "\n" + (f"\n{SEEN_INTRO}\n\n{seen}" if seen else "")


SEEN_INTRO = ("**Seen tasks** (T2L's reconstruction claim): each trained hypernetwork or generator on the tasks it was "
              "trained on. Generated: the adapter made from a training description (T2L) or from training prompts "
              "(DnD), scored on the task's own checked items beside its library LoRA and base; gain recovered: "
              "over the tasks whose library LoRA beats base, the share of that gain the generated adapters keep.")


def seen_task_table(cells) -> str | None:
    """One row per (method, trained generator, library task), from the records' seen-task checks."""
    found = {}
    for c in cells:
        if c["impl"] not in ("t2l", "dnd"):
            continue
        d = c["details"]
        check = d.get("reconstruction") or {}
        key = d.get("hypernet_key") or d.get("generator_key")
        if not check.get("accuracy") or not key:
            continue
        method = f"T2L {d.get('variant')} {d.get('mode')}" if c["impl"] == "t2l" else "DnD"
        found[(c["model"], method, key[:10])] = (c["task"], check)
    if not found:
        return None
    lines = ["| model | method | target (held out) | library task | base | library LoRA | generated | library mean "
             "| cos (seen) | gain recovered |", "|" + "---|" * 10]
    for (model, method, _), (held_out, check) in sorted(found.items()):
        recovered = check.get("gain_recovered")
        for task, row in sorted(check["accuracy"].items()):
            cos = ((check.get("tasks") or {}).get(task) or {}).get("seen", {}).get("cosine")
            lines.append(f"| {model} | {method} | {held_out} | {task} | {_fmt(row.get('base'))} "
                         f"| {_fmt(row.get('library_lora'))} | {_fmt(row.get('generated'))} "
                         f"| {_fmt(row.get('library_mean'))} | {_fmt(cos)} "
                         f"| {f'{recovered:.0%}' if recovered is not None else '—'} |")
    return "\n".join(lines) + "\n"
