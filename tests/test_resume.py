"""A killed sweep resumes without redoing finished cells, and leaves no corrupt record."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, needs_data

SWEEP = ["run", "-m", "model=tiny-random", "task=arc_easy", "strategy=base,icl,lora_fewshot",
         "budget=steps_50", "budget.amount=2", "eval.limit=6", "progress=false"]


def _start(runs, args):
    env = {**os.environ, "HARNESS_RUNS_DIR": str(runs)}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _records(runs):
    return sorted(runs.rglob("record.json"))


@needs_data
def test_kill_then_resume_redoes_nothing_finished(tmp_path):
    runs = tmp_path / "runs"
    proc = _start(runs, SWEEP)
    deadline = time.time() + 300
    while time.time() < deadline and not _records(runs) and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-sweep, as a crash or a pre-empted job would
    proc.wait()
    first = _records(runs)
    assert len(first) == 1, "the first cell should have finished before the kill"
    snapshot = {p: (p.stat().st_mtime_ns, p.read_text()) for p in first}
    json.loads(first[0].read_text())  # complete, parseable

    proc = _start(runs, SWEEP)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    done = _records(runs)
    assert len(done) == 3
    for path, (mtime, text) in snapshot.items():
        assert path.stat().st_mtime_ns == mtime and path.read_text() == text
    assert err.count("skip (finished)") == 1 and err.count("] run: ") == 2
    for path in done:
        record = json.loads(path.read_text())
        assert record["metrics"]["n"] == 6 and (path.parent / "samples.jsonl").is_file()
    assert not list(runs.rglob("*.partial"))
    assert "| arc_easy |" in out  # the leaderboard of the sweep is printed

    proc = _start(runs, SWEEP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and err.count("skip (finished)") == 3 and "] run: " not in err


@needs_data
def test_interrupted_cell_reuses_its_saved_adaptation(tmp_path, capsys, monkeypatch):
    """A cell that died after training but before its record reuses the trained adapter."""
    from harness.cli import main

    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "runs"))
    args = ["run", "model=tiny-random", "task=arc_easy", "strategy=lora_fewshot", "budget=steps_50",
            "budget.amount=2", "eval.limit=4", "progress=false"]
    main(args)
    record_path = _records(tmp_path / "runs")[0]
    folder = record_path.parent
    trained = json.loads(record_path.read_text())
    # Make it look interrupted: the adaptation is there, the record is not.
    partial = folder.with_name(folder.name + ".partial")
    folder.rename(partial)
    (partial / "record.json").unlink()
    capsys.readouterr()
    main(args)
    err = capsys.readouterr().err
    assert f"{partial} was left half-built by a builder that stopped (an earlier run); keeping what it saved" in err
    assert "reusing the adaptation" in err
    again = json.loads(record_path.read_text())
    assert again["adaptation"]["costs"] == trained["adaptation"]["costs"]
    assert again["metrics"]["acc"] == trained["metrics"]["acc"]
