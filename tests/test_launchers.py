"""`harness run` under Hydra's launchers (harness/launchers.py): submitit's local subprocesses and a local Ray
instance run a sweep's cells in other processes, and must give the records the sequential sweep gives; the parent
prints the report from what the workers reported back. Bad launcher names and Ray addresses fail in one line."""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, needs_data

pytestmark = needs_data

# Four distinct cells (two tasks x two strategies), and a fifth job that is one of them again (base ignores the
# seed): two workers given the same cell build it once.
SWEEP = ["run", "-m", "model=tiny-random", "task=arc_easy,boolq", "strategy=base,icl", "seed=0", "eval.limit=6",
         "progress=false"]


def _plugin(name: str):
    try:
        __import__(f"hydra_plugins.{name}")
    except ImportError:
        pytest.skip(f"{name} is not installed (make setup installs the launchers: pip install -e '.[slurm,ray]')")


def _harness(runs: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HARNESS_RUNS_DIR": str(runs)}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _records(runs: Path) -> dict:
    """Each record by its folder under the runs folder (the folder's name ends with the cell's key): its key, its
    metrics and its scored items, which the workers must reproduce."""
    out = {}
    for path in sorted(runs.rglob("record.json")):
        record = json.loads(path.read_text())
        samples = (path.parent / "samples.jsonl").read_text().splitlines()
        items = [{k: v for k, v in json.loads(line).items() if k in ("doc_id", "resps", "filtered_resps", "acc")}
                 for line in samples]
        out[str(path.parent.relative_to(runs))] = (record["key"], record["metrics"], items)
    return out


def _leaves(value) -> list:
    if isinstance(value, dict):
        return [leaf for k in sorted(value) for leaf in [k, *_leaves(value[k])]]
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    runs = tmp_path_factory.mktemp("sequential") / "runs"
    done = _harness(runs, *SWEEP)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(runs)
    assert len(records) == 4
    return records


@pytest.mark.parametrize("launcher,extra", [
    ("submitit_local", ["hydra.launcher.timeout_min=30"]),
    ("ray", ["+hydra.launcher.ray.init.num_cpus=2"]),
], ids=["submitit_local", "ray"])
def test_a_launcher_sweep_gives_the_sequential_records(tmp_path, sequential, launcher, extra):
    _plugin({"submitit_local": "hydra_submitit_launcher", "ray": "hydra_ray_launcher"}[launcher])
    runs = tmp_path / "runs"
    done = _harness(runs, *SWEEP, f"hydra/launcher={launcher}", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    # Same folders, keys and metrics; the items' log-likelihoods to float32 rounding: Ray gives each worker one
    # intra-op thread (OMP_NUM_THREADS=1), which sums in another order than the sequential run's two threads.
    got = _records(runs)
    assert got.keys() == sequential.keys()
    for folder, (key, metrics, items) in got.items():
        assert (key, metrics) == sequential[folder][:2]
        leaves, expected = _leaves(items), _leaves(sequential[folder][2])
        assert [type(x) for x in leaves] == [type(x) for x in expected], folder
        assert [x for x in leaves if not isinstance(x, float)] == [x for x in expected if not isinstance(x, float)]
        floats = [(x, y) for x, y in zip(leaves, expected) if isinstance(x, float)]
        assert floats and all(math.isclose(x, y, rel_tol=1e-5) for x, y in floats), folder
    # the cells ran in other processes (the parent ran none), on at least two workers
    [sweep] = (runs / ".hydra").iterdir()
    reports = [json.loads(p.read_text()) for p in sorted((sweep / "reported").glob("*.json"))]
    assert len(reports) == 4 and all(r["error"] is None for r in reports)
    pids = {r["pid"] for r in reports}
    assert len(pids) >= 2 and not pids & {os.getpid()}
    # ... and the parent printed the report of the four cells
    assert f"[harness] 4 cell(s); records under {runs}/" in done.stdout
    assert (runs / "report" / "leaderboard.csv").read_text().count("tiny-random") == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args,expected", [
    (["hydra/launcher=slurmish"], "unknown launcher 'slurmish': installed here are basic, "),
    (["hydra/launcher=ray", "hydra.launcher.ray.init.address=127.0.0.1:{port}"],
     "cannot reach the Ray cluster at 127.0.0.1:{port}"),
    (["hydra/launcher=ray", "hydra.launcher.ray.init.address=nowhere"], "Ray address 'nowhere' is not HOST:PORT"),
    (["hydra/launcher=ray", "hydra.launcher.ray.init.address=auto"], "no Ray cluster is running on this machine"),
])
def test_bad_launchers_are_one_line_errors(tmp_path, args, expected):
    _plugin("hydra_ray_launcher")
    port = _free_port()  # nothing listens there
    runs = tmp_path / "runs"
    done = _harness(runs, "run", "-m", "model=tiny-random", "strategy=base", *(a.format(port=port) for a in args),
                    timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: ") and expected.format(port=port) in lines[0]
    assert "start one with `ray start --head`" in lines[0] or "pip install -e '.[slurm]'" in lines[0]
    assert not runs.exists() or not list(runs.rglob("record.json"))


def test_an_uninstalled_launcher_names_its_extra(monkeypatch):
    from harness import launchers
    from harness.errors import HarnessError

    monkeypatch.setattr(launchers, "installed", lambda: ["basic"])
    with pytest.raises(HarnessError, match=r"unknown launcher 'submitit_slurm': installed here are basic; "
                                           r"it comes with pip install -e '.\[slurm\]'"):
        launchers.check(["hydra/launcher=submitit_slurm"], Path("runs"))


def test_a_relative_runs_folder_is_made_absolute_for_the_workers(tmp_path, monkeypatch):
    from harness import launchers

    _plugin("hydra_submitit_launcher")
    monkeypatch.chdir(tmp_path)
    assert launchers.check(["task=boolq"], Path("runs")) == ["task=boolq"]  # basic launcher: as given
    assert launchers.check(["hydra/launcher=submitit_local"], Path("runs")) == \
        ["hydra/launcher=submitit_local", f"runs_dir={tmp_path / 'runs'}"]
    assert launchers.check(["hydra/launcher=submitit_local"], tmp_path / "abs") == ["hydra/launcher=submitit_local"]


# DnD leave-one-out at toy scale: two targets over a universe of three tasks, so the two generators share one of
# their two library LoRAs (openbookqa) and each library LoRA serves one or two targets.
DND = ["model=tiny-random", "strategy.universe=[arc_easy,boolq,openbookqa]", "strategy.collect.steps=3",
       "strategy.collect.checkpoints=2", "strategy.collect.check_items=4", "strategy.meta_train.steps=4",
       "strategy.bank=16", "eval.limit=4", "budget=flops_3e12", "progress=false"]


def test_the_phases_of_a_sweep_are_its_cells_prerequisites_once_each():
    """DnD, its mean control and T2L on two targets: the three library LoRAs once (all three strategies read the
    same library), then one generator per target for DnD and one hypernetwork per target for T2L; base adds
    nothing. The 210 cells of the paper-scale experiment need 7 library LoRAs and 7 generators."""
    from harness import launchers

    library = [a for a in DND if not a.startswith(("strategy.meta_train", "strategy.bank"))]
    runs = [["-m", "task=arc_easy,boolq", "strategy=dnd,dnd_mean", "seed=0,1", *DND],  # an experiment's sweeps
            ["-m", "task=arc_easy,boolq", "strategy=t2l", "seed=0,1", *library],
            ["-m", "task=arc_easy,boolq", "strategy=base", "model=tiny-random"],
            ["-m", "task=mathvista", "strategy=dnd", "seed=0,1", *DND]]  # refused by the runner: needs nothing
    phases = launchers.plan_phases(runs)
    assert [(phase, len(jobs)) for phase, jobs in phases] == [("library", 3), ("generator", 4)]
    library, generators = phases[0][1], phases[1][1]
    assert sorted(j["item"] for j in library) == ["arc_easy", "boolq", "openbookqa"]
    assert sorted((j["config"]["strategy"]["name"], j["config"]["task"]["name"]) for j in generators) == \
        [("dnd", "arc_easy"), ("dnd", "boolq"), ("t2l", "arc_easy"), ("t2l", "boolq")]
    assert all(j["config"]["seed"] == 0 for j in generators)  # seeds share the generator: the first cell's
    assert launchers.sweep_cells(["task=boolq", "strategy=dnd", *DND]) == []  # not a sweep: no phases
    assert len(launchers.sweep_cells(["experiment=dnd_commonsense_loo"])) == 7 * 5 * 6


def test_a_dnd_sweep_on_a_launcher_builds_libraries_then_generators_then_cells(tmp_path):
    """One command: wave 1 trains each library LoRA once (the one both targets need, too), wave 2 each target's
    generator, wave 3 the cells, which reuse both and train nothing."""
    _plugin("hydra_submitit_launcher")
    runs = tmp_path / "runs"
    done = _harness(runs, "run", "-m", "task=arc_easy,boolq", "strategy=dnd", *DND, "hydra/launcher=submitit_local")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[harness] phase 1/3: library, 3 job(s) on hydra/launcher=submitit_local" in done.stderr
    assert "[harness] phase 2/3: generator, 2 job(s) on hydra/launcher=submitit_local" in done.stderr
    assert "[harness] phase 3/3: the cells" in done.stderr
    waves = sorted(d for d in (runs / ".hydra").iterdir() if d.is_dir())
    logs = {d.name: "".join(p.read_text() for p in sorted(d.rglob(".submitit/*/*_log.err"))) for d in waves}
    library = next(text for name, text in logs.items() if name.endswith("_phase1_library"))
    generator = next(text for name, text in logs.items() if name.endswith("_phase2_generator"))
    [cells] = [text for name, text in logs.items() if "_phase" not in name]
    for task in ("arc_easy", "boolq", "openbookqa"):
        assert library.count(f"training the library LoRA of {task} ") == 1
    assert generator.count("dnd meta_train: generator tiny-random on ") == 2
    assert "training the library LoRA" not in generator + cells and "meta_train: generator" not in cells
    assert cells.count("] run: tiny-random / ") == 2 and cells.count("] done: tiny-random / ") == 2
    assert len(list(runs.rglob("record.json"))) == 2
    shared = runs / "tiny-random" / "_shared"
    assert len(list(shared.glob("library/*/entry.json"))) == 3 and len(list(shared.glob("generators/*"))) == 2
    assert "[harness] 2 cell(s)" in done.stdout


def test_a_single_cell_with_a_launcher_runs_here_and_prints_its_report(tmp_path):
    """Without -m Hydra runs the one cell in this process whatever the launcher: the report is printed as usual
    and nothing claims that cells failed to report back."""
    _plugin("hydra_submitit_launcher")
    runs = tmp_path / "runs"
    done = _harness(runs, "run", "model=tiny-random", "task=arc_easy", "strategy=base", "eval.limit=2",
                    "progress=false", "hydra/launcher=submitit_local")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[harness] 1 cell(s)" in done.stdout and "reported back" not in done.stderr
    assert len(list(runs.rglob("record.json"))) == 1 and not (runs / ".hydra").exists()
