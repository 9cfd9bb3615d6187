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


def test_a_worker_given_a_cell_another_is_running_skips_it(tmp_path):
    """Base ignores the seed: seeds 0 and 1 are one cell, given to two workers at once; one runs it."""
    _plugin("hydra_submitit_launcher")
    runs = tmp_path / "runs"
    done = _harness(runs, "run", "-m", "model=tiny-random", "task=arc_easy", "strategy=base", "seed=0,1",
                    "eval.limit=4", "progress=false", "hydra/launcher=submitit_local")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(runs.rglob("record.json"))) == 1
    logs = "".join(p.read_text() for p in runs.rglob(".submitit/*/*_log.err"))
    assert logs.count("] run: tiny-random / arc_easy / base") == 1
    assert logs.count("skip (finished") == 1
    assert "[harness] 1 cell(s)" in done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args,expected", [
    (["hydra/launcher=slurmish"], "unknown launcher 'slurmish': installed here are basic, "),
    (["hydra/launcher=ray", "hydra.launcher.ray.init.address=127.0.0.1:{port}"],
     "cannot reach the Ray cluster at 127.0.0.1:{port}"),
    (["hydra/launcher=ray", "hydra.launcher.ray.init.address=nowhere"], "Ray address 'nowhere' is not HOST:PORT"),
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
