"""Shared artifacts are built once when several processes want them at once (harness/artifacts.py), and a builder
killed mid-build is taken over. Real processes, the real lock: threads would share one process's locks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, needs_data

# A slow builder of a two-file artifact through the real store: it logs each build it starts, so that the test can
# count builds, and pauses between its two files (until a `go` file appears) so that the test can act mid-build.
BUILDER = r"""
import json, sys, time
from pathlib import Path
from harness.artifacts import get_or_build

final, log, pause = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

def read(folder):
    done = folder / "b.txt"
    return json.loads(done.read_text()) if done.is_file() else None

def make(work):
    with log.open("a") as fh:
        fh.write(f"build {__import__('os').getpid()}\n")
    (work / "a.txt").write_text("first half\n")
    deadline = time.time() + pause
    while time.time() < deadline and not (log.parent / "go").exists():
        time.sleep(0.05)
    (work / "b.txt").write_text(json.dumps({"a": (work / "a.txt").read_text()}))

value, reused = get_or_build(final, read, make, "the test artifact")
print(json.dumps({"value": value, "reused": reused}))
"""


def _builder(final: Path, log: Path, pause: float) -> subprocess.Popen:
    """The builder in its own process; its stderr goes to a file (`proc.err`), which the test can poll."""
    err = log.with_name(f"err{len(list(log.parent.glob('err*')))}.txt")
    proc = subprocess.Popen([sys.executable, "-c", BUILDER, str(final), str(log), str(pause)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=err.open("w"), text=True)
    proc.err = err
    return proc


def _finish(proc: subprocess.Popen) -> tuple[dict, str]:
    out, _ = proc.communicate(timeout=120)
    err = proc.err.read_text()
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out), err


def _wait_for(ready, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith((".partial", ".lock")))


def test_two_processes_build_one_artifact_once(tmp_path):
    final, log = tmp_path / "cache" / "thing", tmp_path / "builds.log"
    first = _builder(final, log, 60.0)
    _wait_for((final.with_name("thing.partial") / "a.txt").exists)  # mid-build, holding the lock
    second = _builder(final, log, 60.0)
    _wait_for(lambda: "waiting" in second.err.read_text())
    (tmp_path / "go").touch()
    (built, _), (reused, err) = _finish(first), _finish(second)
    assert built == {"value": {"a": "first half\n"}, "reused": False}
    assert reused == {"value": {"a": "first half\n"}, "reused": True}
    assert log.read_text().splitlines() == [f"build {first.pid}"]
    assert f"waiting: another process (pid {first.pid} on " in err and "is building the test artifact" in err
    assert "reusing the test artifact, built by another process meanwhile" in err
    assert sorted(p.name for p in final.iterdir()) == ["a.txt", "b.txt"]  # the builder's own marker is not published
    assert _leftovers(tmp_path) == []


def test_a_killed_builder_is_taken_over(tmp_path):
    """SIGKILL mid-build: the kernel drops the lock, the waiting process takes over the half-built folder with a
    message naming the dead builder, and builds a complete artifact."""
    final, log = tmp_path / "cache" / "thing", tmp_path / "builds.log"
    partial = final.with_name("thing.partial")
    doomed = _builder(final, log, 60.0)
    _wait_for((partial / "a.txt").exists)
    waiter = _builder(final, log, 0.0)
    _wait_for(lambda: "waiting" in waiter.err.read_text())
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    result, err = _finish(waiter)
    assert result == {"value": {"a": "first half\n"}, "reused": False}
    assert f"taking over the test artifact: {partial} was left half-built by a builder that stopped (pid " \
           f"{doomed.pid} on " in err and "building it again" in err
    assert log.read_text().splitlines() == [f"build {doomed.pid}", f"build {waiter.pid}"]
    assert sorted(p.name for p in final.iterdir()) == ["a.txt", "b.txt"] and _leftovers(tmp_path) == []

    # A builder killed with nobody waiting leaves its folder; the next one takes it over the same way.
    other = tmp_path / "cache" / "other"
    doomed = _builder(other, log, 60.0)
    _wait_for((other.with_name("other.partial") / "a.txt").exists)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    assert other.with_name("other.partial").is_dir() and not other.exists()
    result, err = _finish(_builder(other, log, 0.0))
    assert result["reused"] is False and f"(pid {doomed.pid} on " in err and _leftovers(tmp_path) == []


CELL = ["run", "model=tiny-random", "task=arc_easy", "strategy=lora_fewshot", "budget=steps_50", "budget.amount=2",
        "eval.limit=4", "progress=false"]


@needs_data
def test_the_same_cell_run_twice_at_once(tmp_path):
    """Two `harness run` of one LoRA cell at once: one trains and publishes, the other waits and skips it; the
    published record's adapter is there (it used to be deleted by the second finisher)."""
    runs = tmp_path / "runs"
    env = {**os.environ, "HARNESS_RUNS_DIR": str(runs)}
    procs = [subprocess.Popen([sys.executable, "-m", "harness.cli", *CELL], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    assert sum(e.count("] run: ") for e in errs) == 1, errs
    assert sum(e.count("skip (finished") for e in errs) == 1, errs
    [record_path] = runs.rglob("record.json")
    record = json.loads(record_path.read_text())
    adapter = Path(record["adaptation"]["adapter_dir"])
    assert adapter.parent == record_path.parent and (adapter / "adapter_model.safetensors").is_file()
    assert record["metrics"]["n"] == 4 and (record_path.parent / "samples.jsonl").is_file()
    assert not (record_path.parent / ".builder.json").exists() and _leftovers(runs) == []


@needs_data
def test_a_cell_killed_after_adapting_is_taken_over(tmp_path):
    """SIGKILL after the adaptation is saved: the next run takes the .partial folder over, names the dead run and
    reuses its adapter instead of training again."""
    runs = tmp_path / "runs"
    env = {**os.environ, "HARNESS_RUNS_DIR": str(runs)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *CELL], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: any(runs.rglob("*.partial/adaptation.json")) or proc.poll() is not None, timeout=300)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [saved] = runs.rglob("*.partial/adaptation.json")
    again = subprocess.run([sys.executable, "-m", "harness.cli", *CELL], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{saved.parent} was left half-built by a builder that stopped (pid {proc.pid} on " in again.stderr
    assert "keeping what it saved" in again.stderr and "reusing the adaptation saved by an earlier" in again.stderr
    [record_path] = runs.rglob("record.json")
    adapter = Path(json.loads(record_path.read_text())["adaptation"]["adapter_dir"])
    assert adapter.parent == record_path.parent and (adapter / "adapter_model.safetensors").is_file()
    assert _leftovers(runs) == []


# Two processes that each need the same DnD library LoRA (two targets sharing a library, say): one trains it.
COLLECTOR = r"""
import json, sys
from pathlib import Path

import torch

from baselines.dnd.config import DnDSettings, get_preset
from baselines.dnd.library import collect_entry, task_handle
from harness.cli import compose_config
from harness.models import load_model
from harness.strategy_settings import settings_from

cfg = compose_config(["model=tiny-random", "strategy=dnd", "strategy.collect.steps=3",
                      "strategy.collect.checkpoints=2"])
settings = settings_from(DnDSettings, cfg.strategy).collect.for_preset(get_preset("tiny-random"))
loaded = load_model(cfg.model, torch.device("cpu"), torch.float32)
messages = []
entry, reused = collect_entry(task_handle("openbookqa"), loaded.model, loaded.tokenizer, dict(cfg.model), settings,
                              Path(sys.argv[1]), torch.device("cpu"), progress=False, say=messages.append)
print(json.dumps({"reused": reused, "folder": str(entry.folder), "checkpoints": [str(p) for p in entry.checkpoints],
                  "messages": messages}))
"""


@needs_data
def test_two_processes_wanting_one_library_lora_train_it_once(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", COLLECTOR, str(tmp_path / "library")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    trained = [r for r in results if any("training the library LoRA" in m for m in r["messages"])]
    assert len(trained) == 1 and sorted(r["reused"] for r in results) == [False, True], results
    assert results[0]["folder"] == results[1]["folder"] and results[0]["checkpoints"] == results[1]["checkpoints"]
    assert len(results[0]["checkpoints"]) == 2 and all(Path(p).exists() for p in results[0]["checkpoints"])
    left = [p.name for p in (tmp_path / "library").rglob("*") if p.name.endswith((".partial", ".lock"))]
    assert left == []


# Locks on a file system shared by several hosts: the lock file names its holder; a holder on another host is
# judged by its heartbeat (the file's mtime), timed on the waiter's clock.
def _foreign_lock(path: Path, host: str = "node-elsewhere-17", pid: int = 4242) -> dict:
    info = {"host": host, "pid": pid, "token": "feedfacecafebeef", "started": "2026-12-01T03:04:05"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return info


def test_a_lock_left_on_another_host_is_taken_over_after_its_heartbeat_stops(tmp_path, monkeypatch):
    from harness.artifacts import building, lock_path

    monkeypatch.setenv("HARNESS_LOCK_STALE_S", "0.6")
    final = tmp_path / "cache" / "thing"
    _foreign_lock(lock_path(final))
    messages = []
    began = time.monotonic()
    with building(final, "the test artifact", messages.append) as build:
        waited = time.monotonic() - began
        (build.start() / "x.txt").write_text("made here")
        build.publish()
    assert 0.6 <= waited < 10, waited
    assert messages[0] == ("waiting: another process (pid 4242 on node-elsewhere-17, started 2026-12-01T03:04:05) "
                           "is building the test artifact")
    assert messages[1].startswith("taking over the lock on the test artifact: no heartbeat for ")
    assert "(HARNESS_LOCK_STALE_S=0.6) from pid 4242 on node-elsewhere-17" in messages[1]
    assert (final / "x.txt").read_text() == "made here" and _leftovers(tmp_path) == []
    assert sorted(p.name for p in final.parent.iterdir()) == ["thing"]


def test_a_live_lock_on_another_host_is_waited_for(tmp_path, monkeypatch):
    """A holder on another host that keeps its heartbeat is never taken over, however long it holds the lock;
    the waiter builds once the holder releases."""
    import threading

    from harness.artifacts import building, lock_path

    monkeypatch.setenv("HARNESS_LOCK_STALE_S", "0.5")
    final = tmp_path / "thing"
    lock = lock_path(final)
    _foreign_lock(lock)
    stop = threading.Event()

    def beat():  # the remote holder's heartbeat, for 2 s (four times the stale limit), then its release
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            os.utime(lock)
            time.sleep(0.1)
        lock.unlink()
        stop.set()

    threading.Thread(target=beat, daemon=True).start()
    messages = []
    with building(final, "the test artifact", messages.append) as build:
        assert stop.is_set()  # got the lock only after the holder let go
        build.start()
        build.publish()
    assert not any("taking over" in m for m in messages) and len(messages) == 1 and final.is_dir()


def test_a_lock_whose_pid_was_reused_on_this_host_is_stale(tmp_path, monkeypatch):
    """Same host, the pid alive but started at another time than the lock says: another process has the pid."""
    import socket

    from harness.artifacts import building, lock_path

    monkeypatch.setenv("HARNESS_LOCK_STALE_S", "600")
    final = tmp_path / "thing"
    info = _foreign_lock(lock_path(final), host=socket.gethostname(), pid=os.getpid())
    lock_path(final).write_text(json.dumps({**info, "pid_start": "1"}))  # this process did not start at tick 1
    messages = []
    with building(final, "the test artifact", messages.append) as build:
        build.start()
        build.publish()
    assert messages == [f"taking over the lock on the test artifact: its holder, pid {os.getpid()} on this host "
                        f"({socket.gethostname()}), is gone"]


def test_a_holder_that_lost_its_lock_does_not_publish(tmp_path, monkeypatch):
    from harness.artifacts import building, lock_path
    from harness.errors import HarnessError

    monkeypatch.setenv("HARNESS_LOCK_STALE_S", "600")
    final = tmp_path / "thing"
    try:
        with building(final, "the test artifact", lambda m: None) as build:
            (build.start() / "x.txt").write_text("mine")
            _foreign_lock(lock_path(final))  # taken over by a host that judged this holder dead
            build.publish()
    except HarnessError as exc:
        message = str(exc)
    else:
        raise AssertionError("published without the lock")
    assert message.startswith("lost the lock on the test artifact to pid 4242 on node-elsewhere-17") and \
        "nothing was published" in message
    assert not final.exists() and lock_path(final).exists()  # the new holder's lock and folder are left alone
    assert (final.with_name("thing.partial") / "x.txt").exists()


def test_a_bad_stale_limit_is_a_one_line_error(tmp_path, monkeypatch):
    from harness.artifacts import building
    from harness.errors import HarnessError

    monkeypatch.setenv("HARNESS_LOCK_STALE_S", "soon")
    try:
        with building(tmp_path / "thing", "the test artifact", lambda m: None):
            pass
    except HarnessError as exc:
        assert str(exc).startswith("HARNESS_LOCK_STALE_S='soon' is not a positive number of seconds")
    else:
        raise AssertionError("accepted")
