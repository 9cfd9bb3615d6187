"""`harness run` under a Hydra launcher other than the basic one (SLURM and local subprocesses through
hydra-submitit-launcher, Ray through hydra-ray-launcher; README, "Beyond one machine").

The cells then run in other processes, often on other hosts, so the parent learns what they did from the runs
folder, which every worker shares: each cell writes `reported/<job number>.json` into its sweep's folder (the
record's folder, or its one-line error), the `SweepDirs` callback tells the parent where each sweep's folder is,
and the parent builds the report from what came back. Before anything is launched the launcher's name and a Ray
cluster's address are checked, and a relative runs folder is made absolute (a worker's working directory is not
the submitter's).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from harness.errors import HarnessError

EXTRAS = {"submitit_slurm": "slurm", "submitit_local": "slurm", "ray": "ray", "ray_aws": "ray"}
REPORTED = "reported"
SWEEP_DIRS: list[Path] = []  # sweeps started by this process (filled in the parent by SweepDirs)


class SweepDirs(Callback):
    """Hydra callback (configs/config.yaml, hydra.callbacks): runs in the process that launches the sweep."""

    def on_multirun_start(self, config, **kwargs) -> None:
        SWEEP_DIRS.append(Path(str(config.hydra.sweep.dir)).resolve())


def launcher_name(args: list[str]) -> str | None:
    """The launcher a command line chooses (`hydra/launcher=NAME`), or None for Hydra's basic one."""
    for arg in args:
        for prefix in ("hydra/launcher=", "override hydra/launcher="):
            if arg.startswith(prefix):
                name = arg[len(prefix):]
                return None if name == "basic" else name
    return None


def installed() -> list[str]:
    """The launchers Hydra finds here (its plugins register their configs when discovered)."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    Plugins.instance().discover(Launcher)
    repo = ConfigStore.instance().repo.get("hydra", {}).get("launcher", {})
    return sorted(name.removesuffix(".yaml") for name in repo)


def check(args: list[str], runs_dir: Path) -> list[str]:
    """The command line to launch: a one-line HarnessError for an unknown launcher or an unreachable Ray
    cluster; with a launcher, `runs_dir=<absolute path>` added where the runs folder is relative."""
    name = launcher_name(args)
    if name is None:
        return args
    have = installed()
    if name not in have:
        extra = EXTRAS.get(name)
        how = (f"it comes with pip install -e '.[{extra}]'" if extra else
               "SLURM and local subprocesses: pip install -e '.[slurm]' (submitit_slurm, submitit_local); "
               "Ray: pip install -e '.[ray]' (ray)")
        raise HarnessError(f"unknown launcher {name!r}: installed here are {', '.join(have)}; {how}")
    if name == "ray":
        check_ray_address(_override(args, "hydra.launcher.ray.init.address") or os.environ.get("RAY_ADDRESS"))
    if not runs_dir.is_absolute():
        args = [*args, f"runs_dir={runs_dir.resolve()}"]
    return args


def _override(args: list[str], key: str) -> str | None:
    for arg in args:
        if arg.lstrip("+").startswith(key + "="):
            value = arg.split("=", 1)[1]
            return None if value in ("null", "") else value
    return None


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """None or "local" starts a Ray instance on this machine; "auto" needs one running here (`ray start --head`);
    host:port (or ray://host:port) must answer."""
    if address in (None, "local"):
        return
    fix = ("start one with `ray start --head` (then hydra.launcher.ray.init.address=auto), pass a reachable "
           "hydra.launcher.ray.init.address=HOST:PORT, or leave the address out to start Ray on this machine")
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - Ray's own error for a malformed RAY_ADDRESS
            found = None
        if found is None:
            raise HarnessError("hydra.launcher.ray.init.address=auto: no Ray cluster is running on this machine: "
                               + fix)
        address = found
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise HarnessError(f"Ray address {address!r} is not HOST:PORT: {fix}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise HarnessError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): {fix}") from None


def report_back(cfg, folder: Path | None = None, error: str | None = None) -> None:
    """In a cell of a sweep: what it did, into `<sweep dir>/reported/<job number>.json` (see the module)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    out = Path(str(hc.sweep.dir)) / REPORTED / f"{hc.job.num}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "runs_dir": str(cfg.runs_dir),
                               "folder": str(Path(folder).resolve()) if folder else None, "error": error}))
    os.replace(tmp, out)


def reported(sweep_dirs: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(record folders, (host:pid, error) of cells that could not run) that sweeps' cells reported back."""
    folders, errors = [], []
    for sweep in sweep_dirs:
        for path in sorted((sweep / REPORTED).glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0):
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if info.get("folder"):
                folders.append(Path(info["folder"]))
            if info.get("error"):
                errors.append((f"{info.get('host')}:{info.get('pid')}", info["error"]))
    return folders, errors


# Prerequisite phases (Strategy.prerequisites): under a launcher, the shared artifacts a sweep's cells need (DnD's
# library LoRAs, then its generators) are built as waves of jobs, one job per artifact, before the cells run.
PLAN = "plan.json"


def is_hydra_arg(arg: str) -> bool:
    """A launcher or Hydra setting of the command line, which the phases' waves keep (not a cell override)."""
    bare = arg.removeprefix("override ").lstrip("+~")
    return bare.startswith("hydra.") or bare.startswith("hydra/")


def sweep_cells(args: list[str]) -> list[list[str]]:
    """The override list of every job the sweep `args` launches, as Hydra's basic sweeper expands it (the config's
    hydra.sweeper.params, e.g. an experiment's grid, then the command line's overrides); [] when `args` is not a
    sweep (no -m, and no experiment that sets hydra.mode=MULTIRUN)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.cli import override_args
    from harness.settings import CONFIG_DIR

    overrides = override_args(args)
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    first = [f"{o.input_line.split('=', 1)[0]}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
             else o.input_line for o in parsed]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=first, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    if not any(a in ("-m", "--multirun") for a in args) and str(cfg.hydra.get("mode")) != "RunMode.MULTIRUN":
        return []
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]
    cells = [o for o in overrides if not is_hydra_arg(o)]
    [jobs] = BasicSweeper.split_arguments(parser.parse_overrides(params + cells), None)
    return jobs


def plan_phases(runs: list[list[str]], say=print) -> list[tuple[str, list[dict]]]:
    """[(phase, its jobs)] in dependency order for the cells of the sweeps `runs`: each job one prerequisite (a
    cell's resolved config, the phase, the item, the key), equal keys once. Cells whose config a strategy rejects
    are left to fail on their own when they run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from harness.runner import checked_strategy
    from harness.settings import CONFIG_DIR

    order: list[str] = []
    jobs: dict[str, dict[str, dict]] = {}
    cells = [cell for run in runs for cell in sweep_cells(run)]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            for overrides in cells:
                try:
                    cfg = compose(config_name="config", overrides=overrides)
                    needs = checked_strategy(cfg).prerequisites(cfg)  # a cell the runner refuses needs nothing
                except Exception:  # noqa: BLE001 - Hydra or the cell itself says what is wrong when it runs
                    continue
                for need in needs:
                    if need.phase not in order:
                        order.append(need.phase)
                    jobs.setdefault(need.phase, {}).setdefault(need.key, {
                        "phase": need.phase, "item": need.item, "key": need.key,
                        "config": OmegaConf.to_container(cfg, resolve=True)})
    finally:
        GlobalHydra.instance().clear()
    return [(phase, list(jobs[phase].values())) for phase in order]


def wave_args(args: list[str], runs_dir: Path, phase: str, jobs: list[dict], index: int) -> list[str]:
    """The multirun of one phase: the command line's Hydra and launcher settings, one job per prerequisite (its
    entry in the wave's plan file, in the wave's own sweep folder under the runs folder, which every worker reads)."""
    sweep = runs_dir / ".hydra" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}_phase{index}_{phase}"
    sweep.mkdir(parents=True, exist_ok=True)
    plan = sweep / PLAN
    plan.write_text(json.dumps(jobs, indent=1))
    return ["-m", *(a for a in args if is_hydra_arg(a)), f"runs_dir={runs_dir}", f"hydra.sweep.dir='{sweep}'",
            f"+harness_plan='{plan}'", f"+harness_job=range(0,{len(jobs)})"]


def run_planned(cfg) -> None:
    """A job of a phase's wave: build the prerequisite its plan entry names (harness/runner.py: prepare_cell)."""
    from omegaconf import OmegaConf

    from harness.runner import prepare_cell
    from harness.strategy import Prerequisite

    entry = json.loads(Path(str(cfg.harness_plan)).read_text())[int(cfg.harness_job)]
    need = Prerequisite(entry["phase"], entry["key"], entry["item"])
    try:
        prepare_cell(OmegaConf.create(entry["config"]), need)
    except HarnessError as exc:
        print(f"error: {exc}", flush=True, file=sys.stderr)
        report_back(cfg, error=f"{need.phase} {need.item or ''}: {exc}")
    else:
        report_back(cfg)
