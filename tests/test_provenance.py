"""What a result depends on keys it: code, versions, model weights, data; stale records are listed, never reused;
sampled evaluation repeats exactly; the leaderboard says what was scored."""
import hashlib
import json
import shutil

import pytest

from conftest import ROOT, needs_data
from harness import provenance


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """The fingerprint reads a copy of the source tree (the code that runs is still the real one)."""
    copy = tmp_path / "src"
    for top in provenance.CODE_DIRS:
        shutil.copytree(ROOT / top, copy / top, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "ROOT", copy)
    provenance.code_fingerprint.cache_clear()
    yield copy
    provenance.code_fingerprint.cache_clear()


def test_code_fingerprint_follows_source_files_only(source_copy):
    first = provenance.code_fingerprint()
    assert first["files"] > 40
    (source_copy / "harness" / "engines" / "README.md").write_text("documentation is not code\n")
    (source_copy / "harness" / "__pycache__").mkdir(exist_ok=True)
    (source_copy / "harness" / "__pycache__" / "x.py").write_text("# bytecode caches are ignored\n")
    provenance.code_fingerprint.cache_clear()
    assert provenance.code_fingerprint()["sha256"] == first["sha256"]
    path = source_copy / "tasks" / "commonsense" / "utils.py"
    path.write_text(path.read_text() + "\n# one more line\n")
    provenance.code_fingerprint.cache_clear()
    assert provenance.code_fingerprint()["sha256"] != first["sha256"]


def test_model_identity_hashes_the_gguf_and_resolves_hub_revisions(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from harness.models import _package_dir

    cfg = OmegaConf.load(ROOT / "configs" / "model" / "smollm2-135m.yaml")
    gguf = _package_dir(cfg.package) / cfg.gguf_file
    assert provenance.model_identity(cfg) == {"gguf_sha256": hashlib.sha256(gguf.read_bytes()).hexdigest()}
    # A Hub model: a pinned commit is itself; a branch resolves through the local cache's refs when offline.
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    refs = tmp_path / "models--org--name" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    hub = {"source": "hub", "hub_id": "org/name", "revision": None}
    assert provenance.model_identity(hub) == {"hub_id": "org/name", "revision": "main", "commit": commit}
    assert provenance.model_identity({**hub, "revision": "f" * 40})["commit"] == "f" * 40
    assert provenance.model_identity({**hub, "hub_id": "org/absent"})["commit"] is None


def test_changes_name_what_moved():
    old = {"code": "a", "versions": {"torch": "2.1", "peft": "0.1"}, "data": {"x": "1"}}
    new = {"code": "b", "versions": {"torch": "2.2", "peft": "0.1"}, "data": {"x": "1"}, "model": {"m": 1}}
    assert provenance.changes(old, new) == ["code", "versions: torch",
                                            "not recorded: model (a record from before they were keyed)"]
    assert provenance.changes(new, new) == []


CELL = ["model=tiny-random", "task=arc_easy", "strategy=base", "budget=steps_50", "eval.limit=3", "progress=false"]


@needs_data
def test_a_changed_source_file_runs_the_same_cell_again(tmp_path, source_copy, monkeypatch, capsys):
    from harness.cli import main

    runs = tmp_path / "runs"
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(runs))
    main(["run", *CELL])
    first = sorted(runs.rglob("record.json"))
    assert len(first) == 1
    record = json.loads(first[0].read_text())
    assert record["inputs"]["code"] == provenance.code_fingerprint()["sha256"]
    assert set(record["inputs"]["versions"]) == {"torch", "transformers", "peft", "lm_eval"}
    assert record["inputs"]["model"]["tokenizer"]["gguf_sha256"]
    capsys.readouterr()
    main(["run", *CELL])
    assert "skip (finished)" in capsys.readouterr().err

    path = source_copy / "harness" / "stats.py"
    path.write_text(path.read_text() + "\n# changed\n")
    provenance.code_fingerprint.cache_clear()
    main(["run", *CELL])
    err = capsys.readouterr().err
    assert "] run: " in err and "made with other inputs (code)" in err
    records = sorted(runs.rglob("record.json"))
    assert len(records) == 2 and first[0] in records  # the older record is kept, not deleted

    main(["runs", "stale", str(runs)])
    out = capsys.readouterr().out.splitlines()
    assert out == [f"stale  {first[0].parent}  (code)"]
    # A record from before the keys existed is listed as stale too, with what it lacks.
    newer = next(p for p in records if p != first[0])
    data = json.loads(newer.read_text())
    for name in ("code", "versions", "model"):
        data["inputs"].pop(name)
    newer.write_text(json.dumps(data))
    main(["runs", "stale", str(runs)])
    listed = capsys.readouterr().out
    assert "not recorded: code, versions, model" in listed and str(newer.parent) in listed


@needs_data
def test_the_report_keeps_the_newest_record_of_a_cell(tmp_path, monkeypatch, capsys):
    from harness import report
    from harness.cli import main

    runs = tmp_path / "runs"
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(runs))
    main(["run", *CELL])
    folder = next(runs.rglob("record.json")).parent
    older = folder.with_name(folder.name[:-10] + "0000000000")
    shutil.copytree(folder, older)
    data = json.loads((older / "record.json").read_text())
    data["key"], data["finished_at"] = "0" * 64, "2000-01-01T00:00:00+00:00"
    (older / "record.json").write_text(json.dumps(data))
    capsys.readouterr()
    report.build(tmp_path / "report", runs_dir=runs)
    assert "1 older record(s) of the same cells left out" in capsys.readouterr().err
    board = (tmp_path / "report" / "leaderboard.md").read_text()
    assert board.count("| arc_easy |") == 1
    assert "| 3 / 2376 |" in board  # n / N: ARC-Easy's test split is not carved


@needs_data
def test_the_leaderboard_names_variants_and_carved_splits(tmp_path, monkeypatch):
    from harness import report
    from harness.cli import main

    runs = tmp_path / "runs"
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(runs))
    main(["run", "-m", "model=tiny-random", "task=boolq,piqa", "strategy=base", "budget=steps_50", "eval.limit=2",
          "progress=false"])
    report.build(tmp_path / "report", runs_dir=runs)
    board = (tmp_path / "report" / "leaderboard.md").read_text()
    # The offline BoolQ has no passages: the question-only variant, named; 3,270 validation questions.
    assert "| boolq (question-only) |" in board and "| 2 / 3270 |" in board
    # PIQA's pool is carved out of its 1,838 validation items: what remains is scorable.
    assert "| 2 / 1838 (pool carved; 1438 scorable) |" in board
    records = {json.loads(p.read_text())["cell"]["task"]: json.loads(p.read_text()) for p in runs.rglob("record.json")}
    assert records["boolq"]["data"]["variant"] == "question-only" and records["piqa"]["data"]["variant"] == ""


SAMPLED = ["model=tiny-random", "task=humaneval", "strategy=lora_fewshot", "strategy.shots=2", "budget=steps_50",
           "budget.amount=2", "eval.limit=2", "task.sampling.n=3", "task.sampling.temperature=1.0",
           "+task.sampling.max_gen_toks=12", "progress=false"]


@needs_data
def test_sampled_generations_repeat_across_runs_and_a_resume(tmp_path, monkeypatch, capsys):
    import torch

    from harness.cli import main
    from harness.store import read_samples

    def outputs(runs):
        folder = next(runs.rglob("record.json")).parent
        return folder, [s["resps"] for s in read_samples(folder)]

    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "a"))
    main(["run", *SAMPLED])
    folder_a, a = outputs(tmp_path / "a")
    texts = [t for resps in a for t in resps[0]]
    assert len(texts) == 6 and len(set(texts)) > 1  # sampling, not greedy: the samples differ

    torch.manual_seed(12345)  # whatever state the process is in before the cell
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "b"))
    main(["run", *SAMPLED])
    assert outputs(tmp_path / "b")[1] == a

    # Resume: the cell died after training; its adaptation is reused, so training does not consume the
    # generators this time, and the samples must still be the same.
    partial = folder_a.with_name(folder_a.name + ".partial")
    folder_a.rename(partial)
    (partial / "record.json").unlink()
    (partial / "samples.jsonl").unlink()
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "a"))
    capsys.readouterr()
    main(["run", *SAMPLED])
    assert "reusing the adaptation" in capsys.readouterr().err
    assert outputs(tmp_path / "a")[1] == a
