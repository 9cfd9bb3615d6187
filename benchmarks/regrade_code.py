"""Re-grade the stored generations of every code cell under RUNS_DIR with today's graders; say what changed.

A record keeps each sample's generation and the grade it got (`samples.jsonl`). When a grader changes
(issue 11: a pass now needs the driver's token, written only after the last test ran), this runs the
current grader on the same generations, in the sandbox, and compares verdicts sample by sample. It writes
nothing under RUNS_DIR: it answers "would these published numbers change?". A cell whose verdicts change
must be rerun (`harness run` makes a new record under the current code) before its numbers are published.

    .venv/bin/python benchmarks/regrade_code.py runs_mc
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from harness import store
from harness.codeeval import extract_code, grade_programs, humaneval_program, mbpp_program

BUILDERS = {"humaneval": humaneval_program, "mbpp": mbpp_program, "mbpp_sanitized": mbpp_program}
CODE_TASKS = (*BUILDERS, "livecodebench")


def regrade(task: str, doc: dict, completions: list[str]) -> list[dict]:
    if task == "livecodebench":
        from harness.livecodebench import DEFAULT_GRADING, extract_code_lcb, grade_samples

        lcb_runner = (doc.get("grading_mode") or DEFAULT_GRADING) == "lcb_runner"
        extract = extract_code_lcb if lcb_runner else extract_code
        return grade_samples(doc, [extract(str(c)) for c in completions])
    return grade_programs([BUILDERS[task](doc, str(c)) for c in completions])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path)
    args = parser.parse_args()
    rows, changed = [], []
    for folder, record in store.iter_records(args.runs_dir):
        cell = record["cell"]
        if cell["task"] not in CODE_TASKS:
            continue
        before = after = total = 0
        statuses: Counter = Counter()
        for sample in store.read_samples(folder):
            completions = sample["filtered_resps"][0]
            old = sample.get("grades") or []
            new = regrade(cell["task"], sample["doc"], completions)
            for i, (was, now) in enumerate(zip(old, new)):
                total += 1
                before, after = before + bool(was["passed"]), after + bool(now["passed"])
                statuses[now["status"]] += 1
                if bool(was["passed"]) != bool(now["passed"]):
                    changed.append((cell, sample["doc_id"], i, was, now))
        rows.append((cell["task"], cell["strategy"], total, before, after, statuses))
    command = " ".join([".venv/bin/python benchmarks/regrade_code.py", *sys.argv[1:]])
    print(f"Re-graded with the current graders: `{command}`\n")
    print("| task | strategy | samples | passed (recorded) | passed (re-graded) | verdicts changed | statuses now |")
    print("|---|---|---|---|---|---|---|")
    for task, strategy, total, before, after, statuses in sorted(rows):
        n_changed = sum(1 for c, *_ in changed if (c["task"], c["strategy"]) == (task, strategy))
        summary = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        print(f"| {task} | {strategy} | {total} | {before} | {after} | {n_changed} | {summary} |")
    for cell, doc_id, i, was, now in changed:
        print(f"\n- {cell['task']}/{cell['strategy']} doc {doc_id} sample {i}: {was['status']} ({was['reason']}) "
              f"-> {now['status']} ({now['reason']})")
    if not rows:
        print(f"(no finished code cell under {args.runs_dir})")


if __name__ == "__main__":
    main()
