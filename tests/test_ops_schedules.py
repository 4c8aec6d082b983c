"""Schedules: the schedule file and prefect.yaml agree; bad schedule files fail before anything
is served; build-and-publish publishes a build only when it finished whole; and a scheduled run
fires and completes under a real local `prefect server`, served by `nexus-gen serve`."""
from __future__ import annotations

import datetime
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from build_fixtures import small_recipe, write_recipe
from flows.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _tiny_recipe(folder: Path, scenes: int = 2) -> Path:
    """Shards of two 64-px scenes (one shard by default): the cheapest real build."""
    return write_recipe(folder, small_recipe(
        sources=[{"kind": "scenes", "name": "scenes", "count": scenes, "size": 64, "max_objects": 2}],
        edits={"add": 1, "style": 1}, shard_size=2, splits={"train": 1.0},
        outputs={"generation": False, "understanding": False}))


# -- the files agree ------------------------------------------------------------------------------
def test_prefect_yaml_mirrors_the_schedule_file():
    spec = yaml.safe_load((REPO / "datasets_spec" / "schedules.yaml").read_text())
    deploy = yaml.safe_load((REPO / "prefect.yaml").read_text())
    ours = {d["name"]: d for d in spec["deployments"]}
    theirs = {d["name"]: d for d in deploy["deployments"]}
    assert set(ours) == set(theirs) == {"nightly-build", "weekly-benchmark", "build-and-publish"}
    for name, d in theirs.items():
        o = ours[name]
        path, attr = d["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert (REPO / path).is_file() and getattr(module, attr).name == o["flow"], name
        assert d["schedules"] == [{"cron": o["cron"], "timezone": o.get("timezone", spec["timezone"])}], name
        assert d["parameters"] == o["parameters"], name
        assert (d.get("description"), d.get("tags")) == (o.get("description"), o.get("tags")), name
        assert d["work_pool"]["name"] == "nexus-gen"
    assert ours["nightly-build"]["cron"] == "0 2 * * *"
    res = runner.invoke(app, ["serve", "--check"])  # the shipped file passes every check
    assert res.exit_code == 0 and res.output.count("cron '") == 3, res.output


# -- bad schedule files ---------------------------------------------------------------------------
GOOD = {"name": "nightly", "flow": "scheduled-build", "cron": "0 2 * * *",
        "parameters": {"recipe": "demo", "out": "runs/n-{date}"}}


@pytest.mark.parametrize("change, words", [
    ({"cron": "61 2 * * *"}, "Invalid cron string"),
    ({"cron": "0 2 * *"}, "Invalid cron string"),
    ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),
    ({"flow": "nightly-bild"}, "unknown flow 'nightly-bild'"),
    ({"parameters": {"recipe": "demo", "out": "x", "workerz": 2}}, "unknown parameter 'workerz'"),
    ({"parameters": {"recipe": "demo"}}, "needs parameter 'out'"),
    ({"parameters": {"recipe": "demo", "out": "x", "workers": "many"}}, "workers"),
    ({"parameters": {"recipe": "demo", "out": "x", "runner": "spark"}}, "runner"),
    ({"parameters": {"recipe": "demo", "out": "runs/{day}"}}, "unknown placeholder {day}"),
    ({"parameters": {"recipe": "no-such-recipe", "out": "x"}}, "no-such-recipe"),
    ({"interval": 60}, "exactly one of cron or interval"),
    ({"cronn": "0 2 * * *"}, "cronn"),
    ({"name": "Nightly Build"}, "lowercase"),
    ({"flow": "build-and-publish", "parameters": {"recipe": "demo", "out": "x", "publish": {}}},
     "publish (flows.publish.publish_flow) needs parameter 'repo_id'"),
    ({"flow": "build-and-publish", "parameters": {"recipe": "demo", "out": "x",
                                                  "publish": {"repo_id": "o/r", "privat": True}}},
     "unknown parameter 'privat' for publish"),
    ({"flow": "build-and-publish", "parameters": {"recipe": "demo", "out": "x",
                                                  "publish": {"repo_id": "o/r", "retries": "often"}}},
     "retries"),
])
def test_bad_schedule_files_fail_before_serving(tmp_path, change, words):
    spec = tmp_path / "schedules.yaml"
    spec.write_text(yaml.safe_dump({"deployments": [{**GOOD, **change}]}))
    res = runner.invoke(app, ["serve", "--spec", str(spec)])  # no --check: it must stop anyway
    assert res.exit_code == 2, res.output
    assert words in res.output and str(spec) in res.output, res.output
    assert "deployments" in res.output


def test_duplicate_names_and_unknown_only(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"deployments": [GOOD, GOOD]}))
    res = runner.invoke(app, ["serve", "--spec", str(spec)])
    assert res.exit_code == 2 and "a second deployment named 'nightly'" in res.output
    res = runner.invoke(app, ["serve", "--only", "hourly"])
    assert res.exit_code == 2 and "--only hourly: no such deployment" in res.output
    res = runner.invoke(app, ["serve", "--spec", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_out_takes_the_scheduled_date():
    from flows.scheduled import expand_out

    when = datetime.datetime(2026, 3, 1, 1, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=3)))
    assert expand_out("runs/nightly/demo-{date}", when) == "runs/nightly/demo-2026-02-28"  # UTC
    assert expand_out("runs/plain", when) == "runs/plain"
    with pytest.raises(ValueError, match="unknown placeholder"):
        expand_out("runs/{hour}", when)


# -- build and publish ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_failed_build_publishes_nothing(tmp_path, prefect_harness, monkeypatch):
    """Through the real publishing flow into a local hub folder (`dir:`): a failed build leaves
    it empty, a complete one is published, a --limit build is refused."""
    import flows.build
    from flows.scheduled import PublishRefused, build_and_publish, publish_built_run, publish_refusal
    from nexus_gen.edit.build import build

    recipe = _tiny_recipe(tmp_path / "r")
    hub = tmp_path / "hub"
    publish = {"repo_id": "my-org/nightly", "hub": f"dir:{hub}"}
    real = flows.build.run_shard

    def broken(plan, ctx):  # not a transient error: no retry
        raise RuntimeError("the editor backend crashed")

    monkeypatch.setattr(flows.build, "run_shard", broken)
    with pytest.raises(RuntimeError, match="backend crashed"):
        build_and_publish(recipe=str(recipe), out=str(tmp_path / "bad"), publish=publish)
    assert not hub.exists()
    assert json.loads((tmp_path / "bad" / "run.json").read_text())["status"] == "failed"
    assert "is a failed build (last error: " in publish_refusal(str(tmp_path / "bad"))

    monkeypatch.setattr(flows.build, "run_shard", real)
    out = build_and_publish(recipe=str(recipe), out=str(tmp_path / "good-{date}"), publish=publish)
    run = tmp_path / f"good-{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"
    assert out["run"] == str(run) and json.loads((run / "run.json").read_text())["status"] == "complete"
    repo = hub / "my-org" / "nightly"
    assert (repo / "README.md").is_file() and list(repo.rglob("*.parquet"))
    published = sorted(p.relative_to(hub) for p in hub.rglob("*"))

    build(_tiny_recipe(tmp_path / "r2", scenes=4), tmp_path / "limited", limit=1)  # not the whole recipe
    with pytest.raises(PublishRefused, match=r"holds 1 of 2 planned shards \(built with --limit 1\)"):
        publish_built_run(str(tmp_path / "limited"), {**publish, "repo_id": "my-org/limited"})
    assert sorted(p.relative_to(hub) for p in hub.rglob("*")) == published
    assert "is not a build run (run.json missing)" in publish_refusal(str(tmp_path))


# -- a real Prefect server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what is left after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(0.5)
            os.killpg(proc.pid, 0)  # raises once every process of the group is gone
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_scheduled_run_fires_under_a_real_prefect_server(tmp_path):
    import httpx

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    recipe = _tiny_recipe(tmp_path / "recipe")
    spec = tmp_path / "schedules.yaml"
    spec.write_text(yaml.safe_dump({"deployments": [
        {"name": "tick", "flow": "scheduled-build", "cron": "0 2 * * *",
         "parameters": {"recipe": str(recipe), "out": "runs/tick-{date}"}}]}))
    prefect_bin = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    logs = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen([prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=open(logs[0], "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    serve = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            assert server.poll() is None, logs[0].read_text()[-2000:]
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("prefect server did not answer /api/health in 60 s:\n" + logs[0].read_text()[-2000:])
        serve_env = {**env, "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
        serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--spec", str(spec),
                                  "--interval", "5", "--limit", "1"], cwd=tmp_path, env=serve_env,
                                 stdout=open(logs[1], "w"), stderr=subprocess.STDOUT, start_new_session=True)
        completed = None
        deadline = time.time() + 120
        while completed is None and time.time() < deadline:
            assert serve.poll() is None, logs[1].read_text()[-3000:]
            def runs(*states: str) -> list[dict]:
                body = {"flow_runs": {"state": {"type": {"any_": list(states)}},
                                      "deployment_id": {"is_null_": False}}, "limit": 10}
                return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()

            bad = runs("FAILED", "CRASHED")
            assert bad == [], (bad[0]["state_name"], logs[1].read_text()[-3000:])
            done = [r for r in runs("COMPLETED") if r["auto_scheduled"]]
            completed = done[0] if done else None
            time.sleep(1)
        assert completed is not None, "no scheduled run completed in 120 s:\n" + logs[1].read_text()[-3000:]
        deployment = httpx.get(f"{api}/deployments/{completed['deployment_id']}", timeout=10).json()
        assert deployment["name"] == "tick" and deployment["schedules"][0]["schedule"]["interval"] == 5.0
        assert completed["parameters"]["out"] == str(tmp_path / "runs/tick-{date}")
        day = datetime.datetime.fromisoformat(completed["expected_start_time"]).astimezone(datetime.timezone.utc)
        run = tmp_path / "runs" / f"tick-{day:%Y-%m-%d}"
        record = json.loads((run / "run.json").read_text())
        assert record["status"] == "complete" and record["reconciled"] and record["counts"]["triplets"] >= 1
        assert sorted(p.name for p in (run / "data").glob("*.parquet")) == ["train-00000.parquet"]
    finally:
        for proc in (serve, server):
            if proc is not None:
                _stop(proc)
    assert not _group_alive(server.pid) and not _group_alive(serve.pid)
