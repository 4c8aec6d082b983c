"""Scale-out on existing engines: the build through Ray (`prefect-ray`, a real local Ray) and
through the command line against an already running Dask scheduler gives the plain loop's bytes,
file for file (sha256 of every file under data/ and triplets/)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from build_fixtures import small_recipe, write_recipe
from nexus_gen.edit.build import build


def _sha256s(run: Path) -> dict[str, str]:
    """sha256 of every file under RUN/data and RUN/triplets (by relative path) and rejects.jsonl."""
    files = [p for sub in ("data", "triplets") for p in sorted((run / sub).rglob("*")) if p.is_file()]
    files.append(run / "rejects.jsonl")
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("scaleout")
    recipe = write_recipe(d, small_recipe(sources=[{"kind": "scenes", "name": "scenes", "count": 6,
                                                    "size": 64, "max_objects": 3}],
                                          edits={"add": 3, "remove": 3, "style": 3}, shard_size=2))
    record = build(recipe, d / "loop")
    assert record["status"] == "complete" and record["shards"]["done"] >= 3
    return recipe, d / "loop"


def _ray_processes() -> list[psutil.Process]:
    """Ray's daemons started from this test process (raylet, gcs_server, its workers)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any(k in " ".join(p.cmdline()) for k in ("raylet", "gcs_server", "ray::", "ray/_private")):
                out.append(p)
        except psutil.Error:
            continue
    return out


@pytest.mark.slow
def test_local_ray_gives_the_loops_bytes_and_shuts_down(loop_run, tmp_path, prefect_harness, monkeypatch):
    import ray

    from flows.build import build_flow, task_runner

    from nexus_gen.models import loaded

    recipe, loop = loop_run
    assert not ray.is_initialized()
    monkeypatch.setattr(loaded, "_MODELS", {})  # the loop above loaded its models here
    flow = build_flow.with_options(task_runner=task_runner("ray", 2, None))
    record = flow(recipe=str(recipe), out=str(tmp_path / "ray"))
    ref = json.loads((loop / "run.json").read_text())
    assert record["status"] == "complete" and record["counts"] == ref["counts"]
    got, want = _sha256s(tmp_path / "ray"), _sha256s(loop)
    assert len(want) >= 5 and got == want
    assert loaded.loaded_keys() == [], "the shards ran here, not in Ray's worker processes"
    assert not ray.is_initialized(), "the task runner must shut down the Ray it started"
    psutil.wait_procs(_ray_processes(), timeout=20)
    assert _ray_processes() == []


@pytest.mark.slow
def test_cli_build_on_an_existing_dask_scheduler(loop_run, tmp_path, prefect_harness):
    from distributed import LocalCluster

    from flows.cli import app

    recipe, loop = loop_run
    out = tmp_path / "dask"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        res = CliRunner().invoke(app, ["build", str(recipe), "-o", str(out),
                                       "--dask-address", cluster.scheduler_address])
        assert res.exit_code == 0, res.output
        with cluster.get_client() as client:  # the worker process imported the build task
            imported = client.run(lambda: "flows.build" in __import__("sys").modules)
        assert list(imported.values()) == [True]
    assert "runner dask" in res.output
    assert _sha256s(out) == _sha256s(loop)
    last = json.loads(res.output.strip().splitlines()[-1])
    assert last["shards"] == json.loads((loop / "run.json").read_text())["shards"]["done"]


def test_runner_choices_and_conflicting_addresses(tmp_path):
    from prefect_ray import RayTaskRunner

    from flows.build import task_runner
    from flows.cli import app

    r = task_runner("ray", 3, None)
    assert isinstance(r, RayTaskRunner) and r.address is None and r.init_kwargs["num_cpus"] == 3
    assert task_runner("ray", None, None, "10.0.0.5:6379").address == "10.0.0.5:6379"
    res = CliRunner().invoke(app, ["build", "demo", "-o", str(tmp_path / "x"), "--dask-address",
                                   "tcp://127.0.0.1:1", "--ray-address", "127.0.0.1:2"])
    assert res.exit_code == 2 and "two clusters" in res.output and not (tmp_path / "x").exists()
    res = CliRunner().invoke(app, ["build", "demo", "-o", str(tmp_path / "x"), "--runner", "ray",
                                   "--dask-address", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "--runner ray does not go with --dask-address" in res.output


def test_bad_device_and_url_out_fail_before_any_work(tmp_path):
    from flows.cli import app

    import torch

    cases = [(["--device", "gpu"], "use cpu, cuda or cuda:N"),
             (["-o", "s3://bucket/run"], "a run folder is a local path")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no usable CUDA GPU"))
    for extra, words in cases:
        args = ["build", "demo", "-o", str(tmp_path / "x")] + extra
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and words in res.output, (extra, res.output)
    assert list(tmp_path.iterdir()) == [] and not Path("s3:").exists()
    # on a cluster the GPU is the workers': only the spelling is checked here
    res = CliRunner().invoke(app, ["build", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "y"),
                                   "--device", "cuda:1", "--dask-address", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "no recipe at" in res.output and "--device" not in res.output


def test_gpu_builds_ask_the_cluster_for_one_gpu_per_shard():
    import dask
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import RemoteOptionsContext

    from flows.build import gpu_placement

    with gpu_placement("cuda", RayTaskRunner()):
        assert RemoteOptionsContext.get().current_remote_options == {"num_gpus": 1}
    assert RemoteOptionsContext.get().current_remote_options == {}
    with gpu_placement("cuda", DaskTaskRunner()):
        assert dask.get_annotations() == {"resources": {"GPU": 1}}
    for device, runner in (("cpu", RayTaskRunner()), ("cpu", DaskTaskRunner()), ("cuda", ThreadPoolTaskRunner())):
        with gpu_placement(device, runner):
            assert dask.get_annotations() == {} and RemoteOptionsContext.get().current_remote_options == {}
