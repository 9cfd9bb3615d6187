"""Broken inputs through the real CLI: exit 2, one `error:` line naming the fix, no traceback, and nothing new in
the runs folder. Damaged records are run again or skipped by name; a killed report leaves a whole report."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA, needs_data
from harness import store

BASE = ["model=tiny-random", "task=arc_easy", "strategy=base", "eval.limit=2", "progress=false"]
ARC = Path("allenai/ai2_arc/ARC-Easy")


def _env(runs: Path, **extra) -> dict:
    return {**os.environ, "HARNESS_RUNS_DIR": str(runs), **{k: str(v) for k, v in extra.items()}}


def harness(*args, runs: Path, prefix: tuple = (), **env) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=_env(runs, **env),
                          capture_output=True, text=True, timeout=300)


def one_error_line(proc, *expected) -> str:
    """The single `error:` line of a failed command, after checking the exit code and that nothing else broke."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def tree(folder: Path) -> dict:
    """Every path under `folder` with its bytes (None for folders): what a command may not have changed."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def namespace() -> tuple:
    """A command prefix that runs its command in a private mount namespace (as root there), where the test
    mounts a small or read-only file system; skipped where the system allows no such namespace."""
    for prefix in (("unshare", "--user", "--map-root-user", "--mount"), ("unshare", "--mount")):
        if shutil.which(prefix[0]) and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("no mount namespace here (unshare --user --mount is refused): the full-disk and read-only mount "
                "cases need one")


def in_namespace(namespace, setup: str, *args, runs: Path, inspect: Path | None = None, **env):
    """`harness ARGS` after the shell commands `setup`, in a private mount namespace; with `inspect`, the files
    left under that (namespace-only) folder are printed after `LEFT:` on stdout."""
    after = f'echo LEFT:; find "{inspect}" -mindepth 1; ' if inspect else ""
    script = f'set -e; {setup}; set +e; "$@"; rc=$?; {after}exit $rc'
    return subprocess.run([*namespace, "bash", "-c", script, "bash", sys.executable, "-m", "harness.cli", *args],
                          cwd=ROOT, env=_env(runs, **env), capture_output=True, text=True, timeout=300)


def left_behind(proc) -> list[str]:
    return [ln for ln in proc.stdout.split("LEFT:", 1)[1].splitlines() if ln.strip()]


# --------------------------------------------------------------------------- the runs folder and the disk

def test_runs_folder_that_is_a_file(tmp_path):
    runs = tmp_path / "runs"
    runs.write_text("not a folder\n")
    proc = harness("run", *BASE, runs=runs)
    one_error_line(proc, f"cannot write in the runs folder {runs} ({runs} is a file, not a folder)", "HARNESS_RUNS_DIR")
    assert runs.read_text() == "not a folder\n" and sorted(tmp_path.iterdir()) == [runs]
    proc = harness("run", *BASE, runs=runs / "sub")  # a folder inside a file
    one_error_line(proc, f"cannot write in the runs folder {runs / 'sub'} ({runs} is a file, not a folder)",
                   "HARNESS_RUNS_DIR")


def test_read_only_runs_folder(tmp_path, namespace):
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "old" / "notes.txt").write_text("kept\n")
    before = tree(runs)
    setup = f'mount --bind "{runs}" "{runs}"; mount -o remount,bind,ro "{runs}"'
    proc = in_namespace(namespace, setup, "run", *BASE, runs=runs)
    one_error_line(proc, f"cannot write in the runs folder {runs} (Read-only file system)", "HARNESS_RUNS_DIR")
    # a sweep too, before Hydra makes its sweep folder there
    proc = in_namespace(namespace, setup, "run", "-m", *BASE, "seed=0,1", runs=runs)
    one_error_line(proc, "Read-only file system")
    assert tree(runs) == before


@needs_data
@pytest.mark.parametrize("strategy,when", [("base", "record"), ("lora_fewshot", "adapter")])
def test_full_disk_while_writing_a_cell(tmp_path, namespace, strategy, when):
    """ENOSPC (a 16 KiB file system) while the record is written (base), or the trained adapter (LoRA)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    args = ["model=tiny-random", "task=arc_easy", f"strategy={strategy}", "budget=steps_50", "budget.amount=1",
            "budget.horizon=0", "eval.limit=2", "progress=false"]
    proc = in_namespace(namespace, f'mount -t tmpfs -o size=16k tmpfs "{runs}"', "run", *args, runs=runs,
                        inspect=runs)
    one_error_line(proc, "(no space left on device)", "free space there", "HARNESS_RUNS_DIR")
    assert left_behind(proc) == []  # no record, no .partial folder, no empty cell folders


def _records(folder: Path, n: int = 3) -> None:
    from test_report import _record

    for i, strategy in enumerate(("base", "lora", "icl")[:n]):
        _record(folder / strategy, strategy, [1, 0, 1, 1, 0, 0, 1, 0][i:] + [i % 2] * i, adapt_flops=1000 * i)


def test_full_disk_while_writing_the_report(tmp_path, namespace):
    runs, out = tmp_path / "runs", tmp_path / "out"
    _records(runs)
    out.mkdir()
    proc = in_namespace(namespace, f'mount -t tmpfs -o size=16k tmpfs "{out}"', "report", str(runs), "--out",
                        str(out / "report"), runs=runs, inspect=out)
    one_error_line(proc, f"cannot write the report to {out / 'report'} (no space left on device)", "--out")
    assert left_behind(proc) == []


def test_report_out_to_an_unwritable_path(tmp_path, namespace):
    runs, blocked = tmp_path / "runs", tmp_path / "blocked"
    _records(runs)
    blocked.mkdir()
    before = tree(runs)
    setup = f'mount --bind "{blocked}" "{blocked}"; mount -o remount,bind,ro "{blocked}"'
    proc = in_namespace(namespace, setup, "report", str(runs), "--out", str(blocked / "report"), runs=runs)
    one_error_line(proc, f"cannot write the report to {blocked / 'report'} (Read-only file system)",
                   "pass --out a folder you can write")
    file = tmp_path / "a-file"
    file.write_text("x")
    proc = harness("report", str(runs), "--out", str(file), runs=runs)
    one_error_line(proc, f"cannot write the report to {file} ({file} is a file, not a folder)", "pass --out")
    proc = harness("report", str(runs), "--out", str(file / "report"), runs=runs)
    one_error_line(proc, f"cannot write the report to {file / 'report'} ({file} is a file, not a folder)", "pass --out")
    assert tree(runs) == before and list(blocked.iterdir()) == [] and file.read_text() == "x"


# --------------------------------------------------------------------------- adapters

@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A real peft LoRA adapter of the tiny model, as save_pretrained writes it."""
    import torch
    from peft import LoraConfig, get_peft_model

    from conftest import compose
    from harness.models import load_model

    model = load_model(compose("model=tiny-random").model, torch.device("cpu"), torch.float32).model
    folder = tmp_path_factory.mktemp("adapter") / "lora"
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("damage,expected", [
    ("adapter_config.json", "adapter_config.json is unreadable"),
    ("adapter_model.safetensors", "adapter_model.safetensors is unreadable"),
])
def test_truncated_adapter_files(tmp_path, adapter, damage, expected):
    from harness.models import adapter_problem

    assert adapter_problem(adapter) is None
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    data = (broken / damage).read_bytes()
    (broken / damage).write_bytes(data[: len(data) // 2])
    runs = tmp_path / "runs"
    proc = harness("run", "model=tiny-random", "task=arc_easy", "strategy=adapter", f"strategy.path={broken}",
                   "eval.limit=2", runs=runs)
    one_error_line(proc, f"adapter {broken} cannot be loaded", expected, "strategy.path")
    assert tree(runs) == {}


def test_a_damaged_saved_adaptation_is_not_reused(tmp_path, adapter):
    """The adaptation an interrupted run left in its .partial folder is reused only while its adapter loads."""
    from harness.runner import _load_adaptation
    from harness.strategy import Adaptation

    work = tmp_path / "cell.partial"
    shutil.copytree(adapter, work / "adapter")
    saved = Adaptation(kind="adapter", adapter_dir=str(work / "adapter"))
    store.write_json_atomic(work / store.ADAPTATION, {"key": "k", "adaptation": saved.to_dict()})
    assert _load_adaptation(work, "k").adapter_dir == str(work / "adapter")
    weights = work / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    assert _load_adaptation(work, "k") is None


# --------------------------------------------------------------------------- data files

def _arc_rows(split: str, n: int) -> list[dict]:
    with (SHARED_DATA / ARC / f"{split}.jsonl").open() as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def _data(tmp_path, test: list[dict], train: list[dict]) -> Path:
    """A data folder holding only ARC-Easy, with the given rows."""
    folder = tmp_path / "data" / ARC
    folder.mkdir(parents=True)
    for split, rows in (("test", test), ("train", train)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "data"


@needs_data
def test_empty_data_file(tmp_path):
    data = _data(tmp_path, [], _arc_rows("train", 8))
    runs = tmp_path / "runs"
    proc = harness("run", *BASE, runs=runs, HARNESS_DATA_DIR=data)
    one_error_line(proc, "allenai/ai2_arc/ARC-Easy/test", f"{data / ARC / 'test.jsonl'} holds no rows",
                   "re-copy that file")
    assert tree(runs) == {}


@needs_data
def test_eval_row_whose_answer_key_is_not_a_choice(tmp_path):
    test = _arc_rows("test", 6)
    test[3] = {**test[3], "answerKey": "Z"}
    data = _data(tmp_path, test, _arc_rows("train", 8))
    runs = tmp_path / "runs"
    proc = harness("run", *BASE, runs=runs, HARNESS_DATA_DIR=data)
    labels = test[3]["choices"]["label"]
    one_error_line(proc, "task arc_easy: malformed row 3 of split allenai/ai2_arc/ARC-Easy/test",
                   f"answer key 'Z' is not among its choice labels {labels}", "fix or re-download that file")
    assert tree(runs) == {}


# --------------------------------------------------------------------------- records

@needs_data
def test_wrong_shape_record_is_run_again_and_skipped_by_the_report(tmp_path):
    runs = tmp_path / "runs"
    proc = harness("run", *BASE, runs=runs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [path] = runs.rglob(store.RECORD)
    good = json.loads(path.read_text())
    path.write_text(json.dumps({"schema": store.SCHEMA, "key": good["key"], "metrics": [0.5]}))  # valid JSON
    proc = harness("run", *BASE, runs=runs)
    assert proc.returncode == 0 and "skip (finished)" not in proc.stderr, proc.stderr[-2000:]
    assert f"the record {path} is not a finished record (no cell): running the cell again" in proc.stderr
    redone = json.loads(path.read_text())
    assert store.read_record(path.parent) == redone and redone["metrics"]["n"] == 2
    assert redone["metrics"]["acc"] == good["metrics"]["acc"]

    # The report leaves a damaged record out, says so and names it, and reports the rest.
    copy = path.parent.with_name("copy")
    shutil.copytree(path.parent, copy)
    (copy / store.RECORD).write_text("[1, 2, 3]")
    proc = harness("report", str(runs), runs=runs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipped 1 unreadable record(s): {copy / store.RECORD} (the file is list, not an object)" in proc.stderr
    assert "| tiny-random | arc_easy | flops_1e13 | base |" in proc.stdout
    # With nothing readable left: exit 2 and one error line.
    shutil.rmtree(path.parent)
    proc = harness("report", str(runs), runs=runs)
    one_error_line(proc, f"no finished records under {runs} that can be read (1 unreadable, named above)",
                   "fix or delete them")
    assert f"skipped 1 unreadable record(s): {copy / store.RECORD}" in proc.stderr


# --------------------------------------------------------------------------- a killed report

def test_killed_report_leaves_a_whole_report(tmp_path):
    """SIGKILL `harness report` at a random point of its writing, several times: the report folder is always the
    previous report, byte for byte (or, killed after the swap, the complete new one); the next report removes what
    the killed ones left."""
    runs = tmp_path / "runs"
    out = runs / "report"

    def start():
        return subprocess.Popen([sys.executable, "-m", "harness.cli", "report", str(runs)], cwd=ROOT, env=_env(runs),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def building() -> set:
        return set(runs.glob(".report.new-*"))

    _records(runs, n=2)
    proc = start()  # the previous report; how long its writing takes (new folder made → swapped in) is measured
    appeared = gone = None
    while proc.poll() is None:
        if building() and appeared is None:
            appeared = time.monotonic()
        if appeared and not building() and gone is None:
            gone = time.monotonic()
        time.sleep(0.002)
    assert proc.returncode == 0 and appeared and gone, proc.stderr.read()[-2000:]
    (out / "README.md").write_text("not the report's: kept\n")
    old = tree(out)
    _records(runs, n=3)  # a new row: the next report differs from the previous one

    rng = random.Random(0)
    states, mid_write = [], 0
    for _ in range(6):
        stale = building()  # left by an earlier kill: the run removes them first
        proc = start()
        while proc.poll() is None and not building() - stale:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, gone - appeared))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        states.append(tree(out))
        mid_write += states[-1] == old and bool(building())
        if states[-1] != old:  # killed after the swap: put the previous report back for the next kill
            shutil.rmtree(out)
            for path, content in old.items():
                (out / path).parent.mkdir(parents=True, exist_ok=True)
                (out / path).write_bytes(content)
        if mid_write >= 2:
            break
    assert mid_write, "no kill landed while the report was being written"
    proc = start()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    new = tree(out)
    assert new != old and new[Path("README.md")] == old[Path("README.md")]
    assert all(state in (old, new) for state in states), "a killed report left a mix of old and new files"
    assert not [p for p in runs.iterdir() if p.name.startswith(".report.")]


def test_records_are_written_with_the_umask_not_mkstemps_0600(tmp_path):
    """Others sharing a runs folder can read its records, as with any file the user writes."""
    from harness import store

    mask = os.umask(0o022)
    os.umask(mask)
    store.write_json_atomic(tmp_path / "cell" / "record.json", {"a": 1})
    store.write_jsonl_atomic(tmp_path / "cell" / "samples.jsonl", [{"b": 2}])
    for name in ("record.json", "samples.jsonl"):
        assert (tmp_path / "cell" / name).stat().st_mode & 0o777 == 0o666 & ~mask
