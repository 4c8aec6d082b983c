"""`nexus-gen publish` on the command line: bad input is one clear line and a non-zero exit
before any work; a dry run uploads nothing; and the token never appears in any byte written
(files, the Prefect database, stdout, stderr, logs) while the stand-in hub does receive it."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REPO
from hub_fixtures import demo_run, files_under, run_copy  # noqa: F401 (fixtures)
from hub_standin import HubStandIn

runner = CliRunner()


def _cli(*args: str, env: dict | None = None):
    from flows.cli import app

    return runner.invoke(app, list(args), env=env)


def _fake_run(tmp_path: Path, demo_run: Path, **changes) -> Path:  # noqa: F811
    """A run folder holding the demo's records with `changes` to run.json (no shards needed:
    the checks refuse it before reading any)."""
    d = tmp_path / "fake-run"
    d.mkdir()
    shutil.copy(demo_run / "recipe.json", d / "recipe.json")
    record = json.loads((demo_run / "run.json").read_text())
    record.update(changes)
    (d / "run.json").write_text(json.dumps(record))
    return d


@pytest.mark.parametrize("case, expect", [
    ("empty", "is not a build run (run.json missing)"),
    ("missing", "is not a build run: no such folder"),
    ("partial", "is an unfinished build (status 'partial'"),
    ("failed", "is a failed build (last error: RuntimeError: boom)"),
    ("limited", "holds 2 of 6 planned shards (built with --limit 2)"),
    ("unreconciled", "its counts do not reconcile"),
])
def test_a_folder_that_is_not_a_finished_run_is_refused(case, expect, tmp_path, demo_run):  # noqa: F811
    if case == "empty":
        run = tmp_path / "empty"
        run.mkdir()
    elif case == "missing":
        run = tmp_path / "nowhere"
    elif case == "partial":
        run = _fake_run(tmp_path, demo_run, status="partial", shards={"done": 3, "selected": 6, "planned": 6})
    elif case == "failed":
        run = _fake_run(tmp_path, demo_run, status="failed", last_error="RuntimeError: boom")
    elif case == "unreconciled":
        run = _fake_run(tmp_path, demo_run, reconciled=False)
    else:
        run = _fake_run(tmp_path, demo_run, limit=2, shards={"done": 2, "selected": 2, "planned": 6})
    hub = tmp_path / "hub"
    r = _cli("publish", str(run), "--repo-id", "org/name", "--hub", f"dir:{hub}")
    assert r.exit_code == 2, r.output
    assert expect in r.output and r.output.startswith("error: ")
    assert not hub.exists() and not (run / "publish").exists()


@pytest.mark.parametrize("repo_id", ["a", "org/", "/name", "org/na me", "-org/x", "org/x-", "org/a--b",
                                     "org/x.git", "o/r/g", "org/" + "n" * 97, "org/naïve"])
def test_a_bad_repo_id_is_refused(repo_id, demo_run, tmp_path):  # noqa: F811
    r = _cli("publish", str(demo_run), "--repo-id", repo_id, "--hub", f"dir:{tmp_path / 'hub'}")
    assert r.exit_code == 2
    assert f"--repo-id {repo_id!r} is not a valid repository id" in r.output
    assert not (tmp_path / "hub").exists() and not (demo_run / "publish").exists()


def test_a_good_repo_id_passes_the_check():
    from nexus_gen.hub.hub_publish import check_repo_id

    for ok in ("org/name", "Org_1/data.set-v2", "a/b", "o/" + "n" * 96):
        assert check_repo_id(ok) == ok


def test_a_bad_hub_and_a_missing_token_are_refused(demo_run, tmp_path, monkeypatch):  # noqa: F811
    r = _cli("publish", str(demo_run), "--repo-id", "org/name", "--hub", "ftp://x")
    assert r.exit_code == 2 and "--hub 'ftp://x' is not a hub: use hf, modelscope or dir:PATH" in r.output
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hc, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    r = _cli("publish", str(demo_run), "--repo-id", "org/name", "--hub", "hf")
    assert r.exit_code == 2 and "no Hugging Face token: set HF_TOKEN" in r.output
    assert not (demo_run / "publish").exists()


def test_modelscope_without_its_client_names_the_extra(run_copy, monkeypatch):  # noqa: F811
    import builtins

    real_import = builtins.__import__

    def no_modelscope(name, *a, **kw):
        if name.startswith("modelscope"):
            raise ImportError("No module named 'modelscope'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_modelscope)
    from nexus_gen.hub.hub_publish import PublishError, PublishOptions, publish_run

    with pytest.raises(PublishError, match=r"pip install 'nexus-gen\[modelscope\]'"):
        publish_run(run_copy, PublishOptions(repo_id="org/name", hub="modelscope"))
    assert not (run_copy / "publish").exists()


def test_cli_dry_run_uploads_nothing(run_copy, tmp_path, prefect_harness):  # noqa: F811
    hub = tmp_path / "hub"
    r = _cli("publish", str(run_copy), "--repo-id", "org/name", "--hub", f"dir:{hub}", "--dry-run")
    assert r.exit_code == 0, r.output
    last = json.loads(r.output.strip().splitlines()[-1])
    assert last["status"] == "dry-run" and last["uploaded"] == 0 and last["commits"] == 0
    assert "  + README.md" in r.output and not hub.exists()


def _leaks(token: str, paths: list[Path], texts: list[bytes]) -> list[str]:
    needle = token.encode()
    return [str(p) for p in paths if needle in p.read_bytes()] + [f"output {i}" for i, t in enumerate(texts)
                                                                   if needle in t]


@pytest.mark.slow
def test_the_token_is_never_written_or_printed(demo_run, tmp_path):  # noqa: F811
    """A whole publish in a subprocess with --verbose, one transient failure retried on the way."""
    token = "hf_" + secrets.token_hex(16)
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"HF_TOKEN": token, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "PYTHONPATH": str(REPO),
                "HF_HOME": str(tmp_path / "hf-home"), "PREFECT_HOME": str(tmp_path / "prefect")})
    with HubStandIn(tmp_path / "standin", token=token) as hub:
        hub.fail("commit", "500", after=1, times=1)
        p = subprocess.run([sys.executable, "-m", "flows.cli", "--verbose", "publish", str(run), "--hub", "hf",
                            "--endpoint", hub.url, "--commit-files", "4", "--repo-id", "org/data"],
                           env=env, cwd=tmp_path, capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr.decode()[-3000:]
        assert {f"Bearer {token}"} == set(hub.authorizations)  # the hub did get it, in the header
        assert len(hub.commits_of("org/data")) == 4  # 11 files: 10 data files in fours, then the card
    assert json.loads(p.stdout.splitlines()[-1])["status"] == "complete"
    assert b"retry 1 of 5" in p.stderr and b"injected HTTP 500" in p.stderr  # the verbose logs were there
    written = files_under(run, tmp_path / "standin", tmp_path / "hf-home", tmp_path / "prefect")
    assert any(f.name == "publish.json" for f in written) and any(f.suffix == ".db" for f in written)
    leaks = _leaks(token, written, [p.stdout, p.stderr])
    assert not leaks, f"the token appears in {leaks}"


def test_the_token_stays_out_of_a_failed_publish(run_copy, tmp_path, monkeypatch, caplog,  # noqa: F811
                                                 prefect_harness):
    """A publish that fails at a commit (HTTP 403, not retried), in-process: output, every log
    record, the run folder, the stand-in's storage and Prefect's database hold no token."""
    import logging

    import huggingface_hub.constants as hc
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    caplog.set_level(logging.DEBUG)
    with HubStandIn(tmp_path / "standin", token=token) as hub:
        hub.fail("commit", "403", after=1, times=1)
        r = _cli("--verbose", "publish", str(run_copy), "--repo-id", "org/other", "--hub", "hf", "--endpoint",
                 hub.url, "--commit-files", "4", env={"HF_TOKEN": token})
        assert set(hub.authorizations) == {f"Bearer {token}"}
    assert r.exit_code == 1 and "stopped after 1 of 4 commit(s)" in r.output and "403" in r.output
    record = json.loads((run_copy / "publish" / "hf--org--other" / "publish.json").read_text())
    assert record["status"] == "failed"
    db = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    dbs = [Path(db.split("///", 1)[1])] if db.startswith("sqlite") else []
    assert dbs and dbs[0].is_file()
    leaks = _leaks(token, files_under(run_copy, tmp_path / "standin") + dbs,
                   [r.output.encode(), caplog.text.encode(), repr([x.__dict__ for x in caplog.records]).encode()])
    assert not leaks, f"the token appears in {leaks}"
