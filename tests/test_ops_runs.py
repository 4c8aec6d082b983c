"""`nexus-gen runs list / show` over real run folders written by the real writers: a finished,
a failed, an unfinished (stopped mid-run) and a --limit build, a failed build resumed and stopped
again, GenEval-scenes, editing and understanding runs finished and unfinished, train records in
the agreed run.json shape; and folders that are no run."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from build_fixtures import small_recipe, write_recipe
from flows.cli import app
from nexus_gen.edit import build as build_mod
from nexus_gen.edit.build import build, prepare_run
from nexus_gen.edit.execute import run_shard

runner = CliRunner()


def _recipe(folder: Path, example_dir: Path) -> Path:
    """Photos (one good, one truncated, one not an image, one missing) and scenes: rejects with
    several reasons; 4 shards of 2 sources."""
    pics = folder / "pics"
    pics.mkdir(parents=True)
    good = (example_dir / "cat.png").read_bytes()
    (pics / "good.png").write_bytes(good)
    (pics / "truncated.png").write_bytes(good[: len(good) // 2])
    (pics / "text.png").write_bytes(b"this is not an image")
    return write_recipe(folder, small_recipe(
        sources=[{"kind": "images", "name": "photos", "size": 64,
                  "paths": ["pics/good.png", "pics/truncated.png", "pics/text.png", "pics/missing.png"]},
                 {"kind": "scenes", "count": 4, "size": 64}],
        edits={"add": 4, "style": 4}, shard_size=2, splits={"train": 1.0},
        outputs={"generation": False, "understanding": False}))


def _triplet_rows(run: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in (run / "triplets").glob("*.parquet"))


def _markers(run: Path) -> int:
    return len([p for p in (run / ".done").glob("*.json") if not p.name.startswith(".")])


@pytest.fixture(scope="module")
def builds(tmp_path_factory, example_dir):
    """runs/{done,failed,stopped,limited,resumed} built by the library (the flow writes the same
    run.json through the same finish_run)."""
    base = tmp_path_factory.mktemp("ops-runs")
    recipe = _recipe(base / "recipe", example_dir)
    root = base / "runs"
    build(recipe, root / "done")
    build(recipe, root / "limited", limit=1)
    calls = {"n": 0}

    def fails_second(plan, ctx):  # the second shard hits a fault the run records
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return run_shard(plan, ctx)

    build_mod.run_shard = fails_second
    try:
        with pytest.raises(OSError):
            build(recipe, root / "failed")
    finally:
        build_mod.run_shard = run_shard
    shutil.copytree(root / "failed", root / "resumed")
    time.sleep(0.01)
    run = prepare_run(recipe, root / "resumed")  # the same command again, stopped after one shard
    run_shard(run.todo[0], run.ctx)
    run = prepare_run(recipe, root / "stopped")  # a first run killed after one shard: no run.json
    run_shard(run.todo[0], run.ctx)
    (root / "stopped" / ".staging" / run.todo[1].shard_id).mkdir(parents=True)  # one in flight
    return root


def _by_name(records: list[dict]) -> dict[str, dict]:
    return {Path(r["dir"]).name: r for r in records}


def test_runs_list_build_statuses(builds):
    res = runner.invoke(app, ["runs", "list", str(builds), "--json"])
    assert res.exit_code == 0, res.output
    runs = _by_name(json.loads(res.output))
    assert set(runs) == {"done", "failed", "stopped", "limited", "resumed"}
    done = runs["done"]
    ref = json.loads((builds / "done" / "run.json").read_text())
    assert (done["kind"], done["status"], done["name"]) == ("build", "complete", "small")
    assert (done["done"], done["planned"], done["unit"]) == (4, 4, "shards")
    assert done["counts"]["triplets"] == _triplet_rows(builds / "done") == 8 - done["rejected"]
    assert done["rejected"] == len((builds / "done" / "rejects.jsonl").read_text().splitlines()) >= 3
    assert done["duration_s"] == ref["seconds"]["run"] and done["last_error"] is None

    failed = runs["failed"]
    assert failed["status"] == "failed" and failed["last_error"] == "OSError: [Errno 28] No space left on device"
    assert (failed["done"], failed["planned"]) == (_markers(builds / "failed"), 4) and failed["done"] < 4

    stopped = runs["stopped"]  # no run.json: the same command resumes it
    assert stopped["status"] == "unfinished" and stopped["done"] == 1 == _markers(builds / "stopped")
    assert stopped["counts"]["triplets"] == _triplet_rows(builds / "stopped") > 0
    assert "no run.json" in stopped["note"] and "in flight" in stopped["note"]

    limited = runs["limited"]  # --limit 1: complete for what it was asked, not the recipe
    assert limited["status"] == "partial" and (limited["done"], limited["planned"]) == (1, 4)
    assert "--limit 1" in limited["note"]

    resumed = runs["resumed"]  # failed, then rerun and stopped: run.json is older than new shards
    assert resumed["status"] == "unfinished" and resumed["done"] == failed["done"] + 1
    assert "older than 1 finished shard" in resumed["note"]


def test_runs_list_table_and_show(builds):
    res = runner.invoke(app, ["runs", "list", str(builds)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:4] == ["RUN", "KIND", "STATUS", "NAME"]
    status = {ln.split()[0]: ln.split()[2] for ln in lines[1:]}
    assert status == {"done": "complete", "failed": "failed", "limited": "partial",
                      "resumed": "unfinished", "stopped": "unfinished"}
    failed_line = next(ln for ln in lines if ln.startswith("failed "))
    assert "No space left on device" in failed_line and "/4 shards" in failed_line

    res = runner.invoke(app, ["runs", "show", str(builds / "done")])
    assert res.exit_code == 0, res.output
    reasons = json.loads((builds / "done" / "run.json").read_text())["rejects_by_reason"]
    assert len(reasons) >= 2
    for reason, n in reasons.items():  # every reason with its count, on its own line
        assert any(ln.strip().startswith(reason) and ln.split()[-1] == str(n) for ln in res.output.splitlines())
    assert "status:    complete" in res.output
    res = runner.invoke(app, ["runs", "show", str(builds / "stopped"), "--json"])
    assert json.loads(res.output)["status"] == "unfinished"


def test_not_a_run_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for path, words in ((tmp_path / "empty", "is not a run folder"), (tmp_path / "file.txt", "is a file"),
                        (tmp_path / "nowhere", "does not exist")):
        res = runner.invoke(app, ["runs", "show", str(path)])
        assert res.exit_code == 2 and words in res.output and str(path) in res.output, res.output
    res = runner.invoke(app, ["runs", "list", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["runs", "list", str(tmp_path / "empty")])
    assert res.exit_code == 0 and "no runs found" in res.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "recipe.json").write_text("{}")
    (bad / "run.json").write_text('{"status": "compl')  # cut short
    res = runner.invoke(app, ["runs", "show", str(bad), "--json"])
    rec = json.loads(res.output)
    assert res.exit_code == 0 and rec["status"] == "damaged" and "not valid JSON" in rec["last_error"]


def test_train_records_and_dead_processes(tmp_path):
    def write(name: str, record: dict, age_s: float = 0) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "run.json").write_text(json.dumps(record))
        if age_s:
            t = time.time() - age_s
            os.utime(d / "run.json", (t, t))
        return d

    base = {"kind": "train", "stage": "ar", "max_steps": 100, "counts": {"samples": 640, "tokens": 9000}}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write("live", {**base, "status": "running", "step": 40, "seconds": 12.5,
                   "pid": os.getpid(), "host": socket.gethostname()})
    write("dead", {**base, "status": "running", "step": 40, "pid": dead.pid, "host": socket.gethostname()})
    write("quiet", {**base, "status": "running", "step": 7}, age_s=3600)
    write("fresh", {**base, "status": "running", "step": 7})
    write("ok", {**base, "status": "complete", "step": 100, "seconds": 300.0})
    write("oom", {**base, "status": "failed", "step": 3, "last_error": "RuntimeError: CUDA out of memory"})
    res = runner.invoke(app, ["runs", "list", str(tmp_path), "--json"])
    runs = _by_name(json.loads(res.output))
    assert {k: r["status"] for k, r in runs.items()} == {
        "live": "running", "dead": "unfinished", "quiet": "unfinished", "fresh": "running",
        "ok": "complete", "oom": "failed"}
    assert "process" in runs["dead"]["note"] and "1 h" in runs["quiet"]["note"]
    live = runs["live"]
    assert (live["kind"], live["name"], live["done"], live["planned"], live["unit"]) == ("train", "ar", 40, 100, "steps")
    assert live["counts"] == {"samples": 640, "tokens": 9000} and live["duration_s"] == 12.5
    assert runs["oom"]["last_error"] == "RuntimeError: CUDA out of memory"
    table = runner.invoke(app, ["runs", "list", str(tmp_path)]).output
    assert next(ln for ln in table.splitlines() if ln.startswith("ok ")).split()[4:6] == ["100/100", "steps"]
    assert "5:00" in table


def test_search_depth_and_data_folders(builds, tmp_path):
    deep = tmp_path / "a" / "b" / "c" / "d"
    shutil.copytree(builds / "done", deep / "run")
    shutil.copytree(builds / "done", tmp_path / "x" / "data" / "hidden-run")  # a data folder: not entered
    found = json.loads(runner.invoke(app, ["runs", "list", str(tmp_path), "--json"]).output)
    assert found == []
    found = json.loads(runner.invoke(app, ["runs", "list", str(tmp_path), "--json", "--depth", "5"]).output)
    assert [Path(r["dir"]) for r in found] == [deep / "run"]
    one = json.loads(runner.invoke(app, ["runs", "list", str(deep / "run"), "--json"]).output)
    assert len(one) == 1 and one[0]["status"] == "complete"


def test_eval_runs_finished_and_unfinished(tmp_path):
    from eval.editing import edit_run
    from eval.geneval import run as geneval_run
    from eval.understanding import understanding_run as und

    root = tmp_path / "evals"
    cfg = dict(generator="ground-truth", limit=4, n_images=1, size=136)
    geneval_run.run_geneval(geneval_run.GenEvalConfig.from_params(
        "geneval-scenes", out=root / "ge-done", **cfg))
    geneval_run.prepare(geneval_run.check(geneval_run.GenEvalConfig.from_params(
        "geneval-scenes", out=root / "ge-started", **cfg)))

    econf = dict(data="scenes", editor="identity", limit=3, size=64, clip="tiny", dino="tiny")
    edit_run.run(edit_run.prepare(edit_run.check(edit_run.EditingConfig(out=root / "ed-done", **econf))))
    plan = edit_run.prepare(edit_run.check(edit_run.EditingConfig(out=root / "ed-edited", **econf)))
    edit_run.edit_step(plan)  # edited, not scored yet

    plan = und.prepare(und.check(und.UnderstandingConfig(task="scenes", data="scenes:3", model="tiny",
                                                         out=root / "und")))
    items = [json.loads(x) for x in (root / "und" / "items.jsonl").read_text().splitlines()]
    with open(root / "und" / "predictions.jsonl", "w") as f:  # a model that answered 2 items so far
        for it in items[:2]:
            f.write(json.dumps({"id": it["id"], "prediction": "no idea", "model": "tiny", "prompt": "q"}) + "\n")
    mid = _by_name(json.loads(runner.invoke(app, ["runs", "list", str(root), "--json"]).output))
    und.score_step(plan)  # the rest scored as missing predictions
    after = _by_name(json.loads(runner.invoke(app, ["runs", "list", str(root), "--json"]).output))

    ge = after["ge-done"]
    summary = json.loads((root / "ge-done" / "summary.json").read_text())
    assert (ge["kind"], ge["status"], ge["name"]) == ("eval", "complete", "geneval-scenes ground-truth")
    assert (ge["done"], ge["planned"], ge["unit"]) == (4, 4, "prompts")
    assert ge["details"]["headline"]["overall"] == summary["overall"]
    started = after["ge-started"]
    assert started["status"] == "unfinished" and (started["done"], started["planned"]) == (0, 4)
    assert "no summary.json" in started["note"]

    ed = after["ed-done"]
    assert ed["status"] == "complete" and (ed["done"], ed["planned"]) == (3, 3)
    assert ed["details"]["headline"]["l1"] == json.loads((root / "ed-done" / "summary.json").read_text())["overall"]["l1"]
    edited = after["ed-edited"]
    assert edited["status"] == "unfinished" and (edited["done"], edited["planned"]) == (3, 3)
    assert len(list((root / "ed-edited" / "edited").glob("*.png"))) == 3

    u_mid, u = mid["und"], after["und"]
    assert u_mid["status"] == "unfinished" and (u_mid["done"], u_mid["planned"]) == (2, len(items))
    unparsed = json.loads((root / "und" / "summary.json").read_text())["unparsed_reasons"]
    assert u["status"] == "complete" and u["rejects_by_reason"] == unparsed
    assert u["rejected"] >= len(items) - 2  # every item without a prediction, at least


def test_real_training_runs(tmp_path, monkeypatch):
    """Runs written by the training loop itself: complete, failed, and stopped mid-run (a copy
    taken at step 5: run.json still says running at step 0; metrics.jsonl goes on)."""
    from train_fixtures import register_toy, toy_config, write_toy_shards

    from nexus_gen.train.train_config import config_from_dict
    from nexus_gen.train.train_loop import train
    from nexus_gen.train.train_metrics import read_metrics

    register_toy(monkeypatch)
    shards = write_toy_shards(tmp_path / "data", editing=16, other=4)
    root = tmp_path / "train"
    cfg = config_from_dict(toy_config(shards, train={"max_steps": 8}))
    train(cfg, root / "done")

    def stop_at_5(step, row):
        if step == 5:
            shutil.copytree(root / "failed", root / "stopped")  # what a SIGKILL now would leave
            raise RuntimeError("loss exploded at step 5")

    with pytest.raises(RuntimeError, match="exploded"):
        train(cfg, root / "failed", on_step=stop_at_5)
    runs = _by_name(json.loads(runner.invoke(app, ["runs", "list", str(root), "--json"]).output))
    assert set(runs) == {"done", "failed", "stopped"}
    done = runs["done"]
    ref = json.loads((root / "done" / "run.json").read_text())
    assert (done["kind"], done["status"], done["name"], done["done"], done["planned"]) == ("train", "complete", "toy", 8, 8)
    assert done["counts"]["samples"] == ref["counts"]["samples"] > 0 and done["duration_s"] == ref["seconds"]
    assert done["rejects_by_reason"] == ref["counts"]["skipped_by_reason"]
    failed = runs["failed"]
    assert failed["status"] == "failed" and failed["last_error"] == "RuntimeError: loss exploded at step 5"
    stopped = runs["stopped"]
    assert json.loads((root / "stopped" / "run.json").read_text())["step"] == 0
    assert stopped["status"] == "running"  # its record names this process, which is alive
    assert stopped["done"] == read_metrics(root / "stopped")[-1]["step"] >= 4
    # the process the record names is gone (what a SIGKILL leaves): unfinished at once
    record = json.loads((root / "stopped" / "run.json").read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / "stopped" / "run.json").write_text(json.dumps({**record, "pid": dead.pid}))
    rec = json.loads(runner.invoke(app, ["runs", "show", str(root / "stopped"), "--json"]).output)
    assert rec["status"] == "unfinished" and f"its process {dead.pid} is gone" in rec["note"]
    # a record naming no process: unfinished once the folder has been quiet for long
    (root / "stopped" / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k not in ("pid", "host")}))
    hour_ago = time.time() - 3600
    for p in [root / "stopped", *(root / "stopped").rglob("*")]:
        os.utime(p, (hour_ago, hour_ago), follow_symlinks=False)
    res = runner.invoke(app, ["runs", "show", str(root / "stopped"), "--json"])
    rec = json.loads(res.output)
    assert rec["status"] == "unfinished" and "nothing in the run folder has changed for 1 h" in rec["note"]
