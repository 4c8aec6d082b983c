"""The build flow through Prefect's engine: threads and a real Dask LocalCluster give the same
bytes as the plain loop; a real SIGKILL mid-run, then the same command, finishes with the
uninterrupted run's manifest and redoes only unfinished shards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from build_fixtures import small_recipe, write_recipe
from nexus_gen.edit.build import build

REPO = Path(__file__).resolve().parents[1]


def _files(run: Path) -> dict[str, bytes]:
    return {f"{sub}/{p.name}": p.read_bytes() for sub in ("data", "triplets")
            for p in sorted((run / sub).iterdir())} | {"rejects.jsonl": (run / "rejects.jsonl").read_bytes()}


def _markers(done: Path) -> list[Path]:
    """Finished shards' markers (not a marker being written under its temporary name)."""
    return [p for p in done.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("flow")
    recipe = write_recipe(d, small_recipe())
    build(recipe, d / "loop")
    return recipe, d / "loop"


@pytest.mark.slow
def test_threads_and_dask_cluster_give_the_loops_bytes(reference, tmp_path, prefect_harness):
    from distributed import LocalCluster

    from flows.build import build_flow, task_runner

    recipe, loop = reference
    threads = build_flow.with_options(task_runner=task_runner("threads", 2, None))
    rec_t = threads(recipe=str(recipe), out=str(tmp_path / "threads"))
    assert _files(tmp_path / "threads") == _files(loop)
    assert (tmp_path / "threads" / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        assert len(cluster.workers) == 2
        dask = build_flow.with_options(task_runner=task_runner("dask", None, cluster.scheduler_address))
        rec_d = dask(recipe=str(recipe), out=str(tmp_path / "dask"))
        with cluster.get_client() as client:  # the shards ran on the cluster's worker processes
            pids = set(client.run(os.getpid).values())
        assert os.getpid() not in pids and len(pids) == 2
    assert _files(tmp_path / "dask") == _files(loop)
    assert rec_t["counts"] == rec_d["counts"]


@pytest.mark.slow
def test_prefect_does_not_walk_the_shard_plans(reference, tmp_path, prefect_harness, monkeypatch):
    """Shard plans and the build context reach the tasks quoted: Prefect's parameter walk (it
    looks for futures, twice per task) never enters their work items, sources or recipe, which
    cost ~45 ms a shard; the bytes stay the loop's."""
    import prefect.utilities.collections as collections

    from flows.build import build_flow, task_runner
    from nexus_gen.edit.backends.base import SourceRef
    from nexus_gen.edit.plan import WorkItem
    from nexus_gen.edit.recipe import Recipe

    entered: list[str] = []
    walk = collections.visit_collection  # its recursion goes through the module attribute

    def spy(expr, *args, **kwargs):
        if isinstance(expr, (WorkItem, SourceRef, Recipe)):
            entered.append(type(expr).__name__)
        return walk(expr, *args, **kwargs)

    monkeypatch.setattr(collections, "visit_collection", spy)
    recipe, loop = reference
    record = build_flow.with_options(task_runner=task_runner("threads", 1, None))(
        recipe=str(recipe), out=str(tmp_path / "run"))
    assert record["shards"]["done"] >= 2 and entered == []
    assert _files(tmp_path / "run") == _files(loop)


def test_dask_runner_without_address_starts_a_local_cluster():
    from prefect_dask import DaskTaskRunner

    from flows.build import task_runner

    r = task_runner("dask", 3, None)
    assert isinstance(r, DaskTaskRunner) and r.cluster_kwargs["n_workers"] == 3
    assert r.cluster_class is None or "LocalCluster" in str(r.cluster_class)
    with pytest.raises(ValueError, match="unknown runner"):
        task_runner("ray-ish", 1, None)


def test_only_transient_errors_are_retried():
    from flows.build import transient

    assert transient(ConnectionResetError()) and transient(TimeoutError()) and transient(OSError(5, "EIO"))
    assert transient(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not transient(ValueError("bad recipe")) and not transient(FileNotFoundError("x"))
    assert not transient(RuntimeError("shape mismatch"))


@pytest.mark.slow
def test_sigkill_then_same_command(reference, tmp_path):
    """Kill the CLI (and its Prefect server and Dask workers) once a shard is finished and
    others are not; the same command then completes, redoing only unfinished shards."""
    recipe, loop = reference
    out = tmp_path / "run"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [sys.executable, "-m", "flows.cli", "build", str(recipe), "--out", str(out)]
    log = open(tmp_path / "first.log", "w+")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    n_shards = len(json.loads((loop / "run.json").read_text())["seconds"]["shards"])
    done = out / ".done"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if done.is_dir() and len(_markers(done)) >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the build ended before the kill:\n" + (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        log.close()
    finished = {p.name: p.stat().st_mtime_ns for p in _markers(done)}
    assert 1 <= len(finished) < n_shards, "the kill must land mid-run"
    assert not (out / "run.json").exists()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    ref = json.loads((loop / "run.json").read_text())
    assert last == {"triplets": ref["counts"]["triplets"], "samples": ref["counts"]["samples"],
                    "rejected": ref["counts"]["rejected"], "shards": n_shards}
    assert {p.name: p.stat().st_mtime_ns for p in _markers(done) if p.name in finished} == finished
    assert (out / "data" / "manifest.json").read_bytes() == (loop / "data" / "manifest.json").read_bytes()
    assert _files(out) == _files(loop)
