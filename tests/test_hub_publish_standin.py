"""The Hugging Face upload path against a local stand-in of the Hub API (tests/hub_standin.py;
no hub is reachable here): bounded commits, nothing uploaded twice, an interrupted upload
resumes, transient errors are retried with backoff and 4xx are not, a lost commit answer does
not commit twice, and a missing or wrong token stops the publish."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from hub_fixtures import demo_run, files_under, run_copy  # noqa: F401 (fixtures)
from hub_standin import HubStandIn
from nexus_gen.hub.hub_publish import PublishError, PublishOptions, publish_run

TOKEN = "hf_standin_test_token_3f9a"
REPO_ID = "nexus-test/demo"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)  # the tests' default is offline; this hub is local
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubStandIn(tmp_path / "standin", token=TOKEN) as h:
        yield h


def _opts(hub: HubStandIn, **kw) -> PublishOptions:
    base = dict(repo_id=REPO_ID, hub="hf", endpoint=hub.url, commit_files=3, retry_base_seconds=0.5)
    return PublishOptions(**{**base, **kw})


def _remote_sha(hub: HubStandIn, repo_id: str = REPO_ID) -> dict[str, str]:
    return {p: hashlib.sha256(d).hexdigest() for p, d in hub.repos[repo_id].files.items() if p != ".gitattributes"}


def _staged_sha(rec) -> dict[str, str]:
    root = Path(rec["staged"])
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files_under(root)}


def test_commits_are_bounded_and_a_second_publish_makes_none(hub, run_copy):  # noqa: F811
    rec = publish_run(run_copy, _opts(hub))
    assert rec["status"] == "complete"
    staged = _staged_sha(rec)
    assert _remote_sha(hub) == staged  # every staged byte arrived
    data_files = [p for p in staged if p != "README.md"]
    commits = hub.commits_of(REPO_ID)
    assert len(commits) == math.ceil(len(data_files) / 3) + 1  # data in threes, then the card
    assert all(len(c["added"]) <= 3 for c in commits)
    assert commits[-1]["added"] == ["README.md"]
    assert rec["commits"] == [c["oid"] for c in commits]
    again = publish_run(run_copy, _opts(hub))
    assert again["status"] == "complete" and again["uploaded"] == [] and again["commits"] == []
    assert len(hub.commits_of(REPO_ID)) == len(commits)  # the stand-in saw no new commit


def test_an_interrupted_upload_fails_clearly_and_resumes(hub, run_copy):  # noqa: F811
    hub.fail("commit", "drop", after=1, times=100)  # the 2nd commit never gets through
    sleeps: list[float] = []
    with pytest.raises(PublishError) as err:
        publish_run(run_copy, _opts(hub, retries=2), sleep=sleeps.append)
    msg = str(err.value)
    assert "NOT complete" in msg and "run the same command again" in msg and "1 of" in msg
    assert sleeps == [0.5, 1.0]  # two retries, exponential backoff
    import json

    record = json.loads((run_copy / "publish" / "hf--nexus-test--demo" / "publish.json").read_text())
    assert record["status"] == "failed" and record["error"]
    first = hub.commits_of(REPO_ID)
    assert len(first) == 1 and "README.md" not in hub.repos[REPO_ID].files  # no card: not claimed as published
    hub.faults.clear()
    rec = publish_run(run_copy, _opts(hub))
    assert rec["status"] == "complete"
    assert sorted(rec["unchanged"]) == sorted(first[0]["added"])  # the first commit is not redone
    resumed = {p for c in hub.commits_of(REPO_ID)[1:] for p in c["added"]}
    assert resumed == set(_staged_sha(rec)) - set(first[0]["added"])
    assert _remote_sha(hub) == _staged_sha(rec)


def test_transient_500_is_retried_with_backoff(hub, run_copy):  # noqa: F811
    hub.fail("commit", "500", after=0, times=2)
    sleeps: list[float] = []
    rec = publish_run(run_copy, _opts(hub), sleep=sleeps.append)
    assert rec["status"] == "complete" and sleeps == [0.5, 1.0]
    assert _remote_sha(hub) == _staged_sha(rec)


def test_4xx_is_not_retried(hub, run_copy):  # noqa: F811
    hub.fail("commit", "403", after=0, times=1)
    sleeps: list[float] = []
    with pytest.raises(PublishError, match="403"):
        publish_run(run_copy, _opts(hub), sleep=sleeps.append)
    assert sleeps == []
    assert sum(1 for m, p in hub.requests if m == "POST" and p.endswith("/commit/main")) == 1
    assert hub.commits_of(REPO_ID) == []


def test_a_lost_commit_answer_does_not_commit_twice(hub, run_copy):  # noqa: F811
    hub.fail("commit", "lost", after=0, times=1)  # the 1st commit lands, its answer is lost
    sleeps: list[float] = []
    rec = publish_run(run_copy, _opts(hub), sleep=sleeps.append)
    assert rec["status"] == "complete" and sleeps == [0.5]
    added = [p for c in hub.commits_of(REPO_ID) for p in c["added"]]
    assert sorted(added) == sorted(set(added)) == sorted(_staged_sha(rec))  # each file committed once


def test_missing_token_stops_before_any_work(hub, run_copy, monkeypatch, tmp_path):  # noqa: F811
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored login either
    monkeypatch.setattr(hc, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(PublishError, match="no Hugging Face token: set HF_TOKEN"):
        publish_run(run_copy, _opts(hub))
    assert not (run_copy / "publish").exists() and hub.requests == []


def test_a_rejected_token_fails_without_retry(hub, run_copy, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_123")
    sleeps: list[float] = []
    with pytest.raises(PublishError) as err:
        publish_run(run_copy, _opts(hub), sleep=sleeps.append)
    assert "refused the Hugging Face token (HTTP 401)" in str(err.value)
    assert "hf_wrong_token_123" not in str(err.value)
    assert sleeps == [] and REPO_ID not in hub.repos
    assert not (run_copy / "publish").exists()  # refused before any staging
