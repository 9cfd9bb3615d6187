"""A regular (non-editable) install works on its own: configs/ and tasks/ ship in the wheel as harness_assets,
the harness finds them there, and the installed copy of a tree keys results with that tree's code sha."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, needs_data

CODE_SUFFIXES = (".py", ".yaml", "_yaml", ".jinja")  # provenance.CODE_SUFFIXES, restated so a change there shows


def _ignore(folder, names):
    """Leave out what a build would not read from a fresh clone: caches, virtual envs, old builds, runs."""
    top = Path(folder) == ROOT
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")
            or top and (n.startswith(".") or n in ("build", "dist", "runs"))}


def _pip(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args, "--no-index"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    """A copy of the checkout (so the build leaves nothing in it), its wheel, and the wheel installed by --target."""
    pytest.importorskip("setuptools")  # the build backend, used from this environment (no isolation, no index)
    pytest.importorskip("pip")
    base = tmp_path_factory.mktemp("packaging")
    src, dist, site = base / "src", base / "dist", base / "site"
    shutil.copytree(ROOT, src, ignore=_ignore)
    _pip("wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(dist), cwd=src)
    (wheel,) = dist.glob("*.whl")
    _pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=base)
    outside = base / "cwd"
    outside.mkdir()
    return {"src": src, "wheel": wheel, "site": site, "cwd": outside}


def _run(install, *args, python_path=None, **env):
    """A command run from outside the checkout, importing only what python_path (by default the install) holds."""
    full_env = {**os.environ, "PYTHONPATH": str(python_path or install["site"]), **env}
    return subprocess.run(list(args), cwd=install["cwd"], env=full_env, capture_output=True, text=True, timeout=300)


PROBE = """
import importlib.util, json, harness
from harness import provenance, settings
print(json.dumps({"harness": harness.__file__, "baselines": importlib.util.find_spec("baselines").origin,
                  "root": str(settings.PROJECT_ROOT), "checkout": settings.FROM_CHECKOUT,
                  "code": provenance.code_fingerprint()}))
"""  # baselines is found, not imported: importing it loads torch


def _probe(install, python_path=None) -> dict:
    proc = _run(install, sys.executable, "-c", PROBE, python_path=python_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_wheel_holds_the_code_configs_and_tasks_only(install):
    src = install["src"]
    expected = set()
    for top, into, suffixes in (("harness", "harness", CODE_SUFFIXES), ("baselines", "baselines", CODE_SUFFIXES),
                                ("configs", "harness_assets/configs", (".yaml",)),
                                ("tasks", "harness_assets/tasks", CODE_SUFFIXES)):
        for path in (src / top).rglob("*"):
            if path.is_file() and path.name.endswith(suffixes) and "__pycache__" not in path.parts:
                expected.add(f"{into}/{path.relative_to(src / top).as_posix()}")
    with zipfile.ZipFile(install["wheel"]) as whl:
        names = whl.namelist()
        top_level = whl.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
    files = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert not [n for n in files if n.split("/")[0] in ("tests", "benchmarks", "results", "runs")]
    assert not [n for n in files if n.endswith((".jsonl", ".json", ".csv", ".parquet", ".arrow", ".png", ".gguf"))]
    # a folder missing from pyproject's package list shows here (and as a different code sha)
    assert sorted(expected - files) == [], "in the tree but not in the wheel"
    assert sorted(files - expected) == [], "in the wheel but not code, configs or tasks"
    assert sorted(top_level) == ["baselines", "harness", "harness_assets"]


def test_installed_copy_is_what_runs_and_has_the_tree_s_code_sha(install):
    site = install["site"].resolve()
    installed = _probe(install)
    assert Path(installed["harness"]).resolve().is_relative_to(site), installed["harness"]  # not the editable one
    assert Path(installed["baselines"]).resolve().is_relative_to(site)
    assert Path(installed["root"]) == site / "harness_assets" and installed["checkout"] is False
    tree = _probe(install, python_path=install["src"])  # the copied source tree, run in place
    assert Path(tree["harness"]).resolve().is_relative_to(install["src"].resolve()) and tree["checkout"] is True
    assert installed["code"]["files"] == tree["code"]["files"] > 40
    assert installed["code"]["sha256"] == tree["code"]["sha256"]
    assert installed["code"]["git"] is None  # no repository around site-packages is taken for this code's


def test_installed_list_tasks(install):
    proc = _run(install, sys.executable, "-m", "harness.cli", "list", "tasks")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert listed == {p.stem for p in (install["src"] / "configs" / "task").glob("*.yaml")}
    assert "arc_easy" in listed


@needs_data
def test_installed_run_writes_a_finished_record(install, tmp_path):
    from harness import store

    script = install["site"] / "bin" / "harness"  # the console script the wheel declares
    runs = tmp_path / "runs"
    proc = _run(install, str(script), "run", "model=tiny-random", "task=arc_easy", "strategy=base", "eval.limit=4",
                HARNESS_RUNS_DIR=str(runs))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    records = list(store.iter_records(runs))
    assert len(records) == 1
    record = records[0][1]
    assert str(install["site"].resolve() / "harness_assets" / "tasks") in json.dumps(record)  # lm-eval read those
    assert record["code"]["sha256"] == _probe(install)["code"]["sha256"]
    assert record["metrics"] and not list(install["cwd"].iterdir())  # nothing written where it ran
