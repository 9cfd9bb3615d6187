"""`harness run | list | report | recommend | runs stale`.

`run` hands its arguments to Hydra (overrides, `-m` sweeps, launchers) after checking them, so
that a typo costs a one-line error instead of a stack trace or a half-run sweep.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness import launchers
from harness.errors import HarnessError
from harness.settings import CONFIG_DIR

GROUPS = ("model", "task", "strategy", "budget", "engine", "experiment")
PLURALS = {"models": "model", "tasks": "task", "strategies": "strategy", "budgets": "budget", "engines": "engine",
           "experiments": "experiment"}
# Hydra flags whose next argument is a value, not an override.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
               "-cd", "--info", "-i", "--experimental-rerun"}
# Hydra flags that print something and run nothing.
INFO_FLAGS = {"--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
FINISHED: list[Path] = []  # cells run or skipped by this process (basic launcher)
FAILED: list[str] = []  # one-line errors of cells that could not run
ROOTS: list[Path] = []  # runs_dir of each cell, as composed


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def override_args(args: list[str]) -> list[str]:
    """The overrides of a `harness run` command line: its arguments less Hydra's flags and their values."""
    overrides, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg in VALUE_FLAGS and not skip
            continue
        overrides.append(arg)
    return overrides


def check_overrides(args: list[str]):
    """Malformed overrides, unknown group options and unknown keys, before anything runs; returns the
    config of the sweep's first cell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    overrides = override_args(args)
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException as exc:
        bad = next((o for o in overrides if _unparsable(parser, o)), overrides[-1] if overrides else "")
        raise HarnessError(f"malformed override {bad!r} ({str(exc).splitlines()[0][:120]}): "
                           f"write key=value, e.g. task=arc_easy, or key=a,b with -m to sweep") from None
    multirun = any(a in ("-m", "--multirun") for a in args)
    first_values = []
    for ov in parsed:
        key = ov.get_key_element()
        if key.startswith("hydra") or key.startswith("hydra/"):
            continue
        group = ov.key_or_group
        if ov.is_sweep_override() and not multirun:
            raise HarnessError(f"{ov.input_line!r} lists several values: add -m to sweep them "
                               f"(harness run -m {ov.input_line} ...)")
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        if group in GROUPS and not ov.is_delete():
            for value in values:
                if value in ("null",) and group == "experiment":
                    continue
                if value not in options(group):
                    plural = next(p for p, g in PLURALS.items() if g == group)
                    raise HarnessError(f"unknown {group} {value!r}: choose one of {', '.join(options(group))} "
                                       f"(see `harness list {plural}`)")
        prefix = ov.input_line.split("=", 1)[0]
        first_values.append(f"{prefix}={values[0]}" if values else ov.input_line)
    return compose_config(first_values)


def _unparsable(parser, override: str) -> bool:
    try:
        parser.parse_overrides([override])
        return False
    except Exception:
        return True


def compose_config(overrides: list[str]):
    """The config `harness run OVERRIDES` would run (a single cell), or a one-line HarnessError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
        raise HarnessError(f"invalid configuration: {' '.join(lines[:2])} (see `harness list` and configs/)") from None
    finally:
        GlobalHydra.instance().clear()


def _hydra_run(args: list[str]) -> None:
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def entry(cfg) -> None:
        from harness.runner import run_cell

        from harness.launchers import report_back, run_planned

        if cfg.get("harness_plan"):  # a job of a prerequisite phase (harness/launchers.py), not a cell
            run_planned(cfg)
            return
        ROOTS.append(Path(cfg.runs_dir))
        try:
            folder = run_cell(cfg)
        except HarnessError as exc:  # this cell cannot run; a sweep carries on with the others
            print(f"error: {exc}", file=sys.stderr, flush=True)
            FAILED.append(str(exc))
            report_back(cfg, error=str(exc))
        else:
            FINISHED.append(folder)
            report_back(cfg, folder=folder)

    saved = sys.argv
    sys.argv = ["harness run", *args]
    try:
        entry()
    finally:
        sys.argv = saved


def cmd_run(args: list[str]) -> None:
    if not args:
        args = ["experiment=default"]
    if any(a in ("-h", "--help", "--hydra-help") for a in args):
        _hydra_run(args)
        return
    cfg = check_overrides(args)
    if not any(a in INFO_FLAGS for a in args):  # before Hydra writes a sweep's folder there, or a cell runs
        from harness import store

        store.check_writable(Path(cfg.runs_dir))
    launcher = launchers.launcher_name(args)
    args = launchers.check(args, Path(cfg.runs_dir))
    FINISHED.clear(), FAILED.clear(), ROOTS.clear(), launchers.SWEEP_DIRS.clear()
    sweeps = cfg.get("sweeps")
    # An experiment made of several sweeps (a union of grids that one cartesian product cannot express): each list
    # of overrides runs as its own -m sweep on top of the command line.
    runs = [["-m", *args, *(str(o) for o in sweep)] for sweep in sweeps] if sweeps else [args]
    for run in runs if sweeps else []:
        check_overrides(run)
    if launcher and not any(a in INFO_FLAGS for a in args):
        _prerequisite_phases(runs, args, Path(cfg.runs_dir).resolve(), launcher)
    for run in runs:
        _hydra_run(run)
    if launcher:  # the cells ran in other processes: what they did comes back through the sweep folders
        folders, errors = launchers.reported(launchers.SWEEP_DIRS)
        FINISHED.extend(folders)
        for where, error in errors:
            print(f"error: (cell run by {where}) {error}", file=sys.stderr)
            FAILED.append(error)
        if not folders and not errors and not FINISHED and not FAILED:  # (a single cell runs here: no report)
            where = ", ".join(str(d) for d in launchers.SWEEP_DIRS) or "the sweep folder"
            print(f"[harness] no cell reported back to {where}: when the workers write to another file system, run "
                  f"`harness report RUNS_DIR` there", file=sys.stderr)
    if FINISHED:
        from harness import report

        folders = list(dict.fromkeys(FINISHED))
        root = ROOTS[0] if ROOTS else Path(cfg.runs_dir).resolve()
        out = root / "report"
        text = report.build(out, folders=folders, runs_dir=root)  # one-off shares counted over the whole store
        print(text)
        print(f"[harness] {len(folders)} cell(s); records under {root}/, report in {out}/ "
              f"(leaderboard.md, leaderboard.csv, significance.csv, accuracy_vs_flops.png)")
    if FAILED:
        raise SystemExit(2 if len(FAILED) == 1 and not FINISHED else _summary_exit())


def _prerequisite_phases(runs: list[list[str]], args: list[str], runs_dir: Path, launcher: str) -> None:
    """Under a launcher: the shared artifacts the sweep's cells need, one wave of jobs per phase in dependency order
    (DnD: every library LoRA, then every generator), before the cells run (see Strategy.prerequisites)."""
    print("[harness] planning the shared artifacts the sweep's cells need (Strategy.prerequisites) ...",
          file=sys.stderr, flush=True)
    waves = launchers.plan_phases(runs)
    for i, (phase, jobs) in enumerate(waves, 1):
        print(f"[harness] phase {i}/{len(waves) + 1}: {phase}, {len(jobs)} job(s) on hydra/launcher={launcher}",
              file=sys.stderr, flush=True)
        start = len(launchers.SWEEP_DIRS)
        _hydra_run(launchers.wave_args(args, runs_dir, phase, jobs, i))
        _, errors = launchers.reported(launchers.SWEEP_DIRS[start:])
        for where, error in errors:  # the cells that need it fail on their own, with the same error
            print(f"error: (phase {phase}, run by {where}) {error}", file=sys.stderr, flush=True)
        del launchers.SWEEP_DIRS[start:]  # what the cells report is collected from the cells' sweeps alone
    if waves:
        print(f"[harness] phase {len(waves) + 1}/{len(waves) + 1}: the cells", file=sys.stderr, flush=True)


def _summary_exit() -> int:
    print(f"error: {len(FAILED)} cell(s) failed (see the error lines above); the others finished", file=sys.stderr)
    return 2


def cmd_list(what: str) -> None:
    from omegaconf import OmegaConf

    group = PLURALS.get(what, what)
    if group not in GROUPS:  # a page a registered strategy adds (Strategy.list_pages), e.g. dnd-presets
        from harness.strategy import list_pages

        pages = list_pages()
        if what not in pages:
            raise HarnessError(f"nothing called {what!r} to list: use one of tasks, strategies, models, budgets, "
                               f"experiments, engines, {', '.join(pages)}")
        pages[what]()
        return
    def load(name: str):  # a group option merged over the options it names in its defaults list
        cfg = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
        parents = [d for d in cfg.get("defaults", []) if isinstance(d, str) and d != "_self_"]
        return OmegaConf.merge(*(load(p) for p in parents), cfg) if parents else cfg

    for name in options(group):
        cfg = load(name)
        if group == "task":
            extra = f"{cfg.get('family', '')}, lm-eval task {cfg.get('lm_eval_task')}; {_scored_part(cfg)}"
            for field_name, variant in (cfg.get("standard_fields") or {}).items():
                extra += f"; {variant} variant where the data has no {field_name} (e.g. the offline mirror)"
        elif group == "budget":
            extra = (f"{cfg.kind} ≤ {cfg.amount:g}, horizon {cfg.horizon} queries, one-off phases {cfg.one_off}, "
                     f"ICL prefix priced {cfg.get('icl_pricing')}")
        elif group == "model":
            extra = f"{cfg.source}: {cfg.get('hub_id') or cfg.get('gguf_file') or ''}"
        elif group == "strategy":
            extra = f"impl={cfg.get('impl', name)}" + (f", shots={cfg.shots}" if "shots" in cfg else "")
        else:
            first = (CONFIG_DIR / group / f"{name}.yaml").read_text().splitlines()
            extra = next((ln.lstrip("# ").strip() for ln in first if ln.startswith("#") and "@package" not in ln), "")
        print(f"{name:18s} {extra}")


def _scored_part(cfg) -> str:
    """Which part of its split a task scores: all of it, or what a carved adaptation pool leaves."""
    from harness.tasks import task_manager

    manager = task_manager()
    name = str(cfg.get("lm_eval_task"))
    if name not in manager.all_tasks:
        return "not defined under tasks/"
    kwargs = manager._factory._load_full_config(manager._entry(name), None).get("dataset_kwargs") or {}
    if "release_version" in kwargs:  # LiveCodeBench: problems of a release window
        return (f"scores the problems of {kwargs['release_version']} in its date window, less a pool of "
                f"{kwargs.get('pool_size')} carved out of them")
    split = kwargs.get("eval_split", "?")
    if kwargs.get("pool_split"):
        return f"scores all of {split} (pool from {kwargs['pool_split']})"
    if kwargs.get("pool_size"):
        return f"scores {split} less a pool of >= {kwargs['pool_size']} carved out of it"
    return f"scores {split}"


def cmd_report(runs: str | None, out: str | None) -> None:
    from harness import report
    from harness.settings import runs_dir

    root = Path(runs) if runs else runs_dir()
    if not root.is_dir():
        raise HarnessError(f"runs directory {root} does not exist: pass the folder `harness run` wrote to")
    target = Path(out) if out else root / "report"
    print(report.build(target, runs_dir=root))
    print(f"[harness] report in {target}/")


def cmd_recommend(args: list[str]) -> None:
    """`harness recommend [RUNS_DIR] --task T [--model M] --queries Q [--labels L] [--max-flops F | --max-seconds S]
    [--plot PNG]`: the strategies that fit, ranked, with their totals at Q queries and the break-even counts."""
    from harness.recommend import recommend
    from harness.settings import runs_dir

    p = _Parser(prog="harness recommend")
    p.add_argument("runs_dir", nargs="?", help="a runs folder, or a report folder holding leaderboard.csv")
    p.add_argument("--task", required=True)
    p.add_argument("--model")
    p.add_argument("--queries", type=int, required=True, help="queries the adapted model will answer")
    p.add_argument("--labels", type=int, help="labeled examples you have")
    p.add_argument("--max-flops", type=float, help="total FLOPs you can spend: adaptation + queries")
    p.add_argument("--max-seconds", type=float, help="total seconds you can spend: adaptation + queries")
    p.add_argument("--plot", help="write total cost against queries, one line per strategy, to this PNG")
    ns = p.parse_args(args)
    root = Path(ns.runs_dir) if ns.runs_dir else runs_dir()
    print(recommend(root, ns.task, ns.queries, model=ns.model, labels=ns.labels, max_flops=ns.max_flops,
                    max_seconds=ns.max_seconds, plot=Path(ns.plot) if ns.plot else None))


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are the harness's one line (`error: ...`, exit 2) rather than usage plus message."""

    def error(self, message: str) -> None:
        raise HarnessError(f"{self.prog}: {message}: see `{self.prog} --help`")


def cmd_runs(args: list[str]) -> None:
    """`harness runs stale [RUNS_DIR]`: finished records whose inputs changed since they were written."""
    from harness import provenance, store
    from harness.settings import runs_dir

    if not args or args[0] != "stale" or len(args) > 2:
        raise HarnessError("usage: harness runs stale [RUNS_DIR]")
    root = Path(args[1]) if len(args) > 1 else runs_dir()
    if not root.is_dir():
        raise HarnessError(f"runs directory {root} does not exist: pass the folder `harness run` wrote to")
    stale = provenance.stale_records(root)
    for folder, reasons in stale:
        print(f"stale  {folder}  ({'; '.join(reasons)})")
    total = sum(1 for _ in store.iter_records(root))
    print(f"[harness] {len(stale)} of {total} finished records under {root} are stale: `harness run` with the "
          "same config runs them again (into new folders) and the report shows the newest record of each cell; "
          "delete a stale folder yourself when you no longer need it", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nusage: harness run [OVERRIDES...] | harness list WHAT | "
              "harness report [RUNS_DIR] [--out DIR] | harness recommend [RUNS_DIR] --task T --queries Q ... | "
              "harness runs stale [RUNS_DIR]")
        return
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            cmd_run(rest)
        elif command == "list":
            if len(rest) != 1:
                raise HarnessError("usage: harness list tasks|strategies|models|budgets|experiments|engines")
            cmd_list(rest[0])
        elif command == "report":
            p = argparse.ArgumentParser(prog="harness report")
            p.add_argument("runs_dir", nargs="?")
            p.add_argument("--out")
            ns = p.parse_args(rest)
            cmd_report(ns.runs_dir, ns.out)
        elif command == "recommend":
            cmd_recommend(rest)
        elif command == "runs":
            cmd_runs(rest)
        else:
            raise HarnessError(f"unknown command {command!r}: use run, list, report, recommend or runs")
    except HarnessError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
