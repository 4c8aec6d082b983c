"""Publishing filtered data: `publish RUN --policy P` and `publish SELECT_DIR` to a folder hub.
The kept ids are computed here from the run's stored scores with pandas and a one-rule policy's
threshold (not with select's helpers); a select folder publishes the same bytes as --policy; the
card's per-rule numbers are selection.json's; a rerun reuses the staging and changes nothing; bad
policies and stale selections are refused before any work."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hub_fixtures import demo_run, files_under, run_copy  # noqa: F401 (fixtures)
from nexus_gen.hub.hub_publish import PublishOptions, publish_run

REPO_ID = "nexus-test/filtered"


def _policy_file(tmp_path: Path, threshold: float, name: str = "similar_only") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\ntask: editing\nrules:\n"
                 f"  - {{name: similar, column: clip_i, op: '>=', value: {threshold!r}}}\n", encoding="utf-8")
    return p


def _median_clip_i(run: Path) -> float:
    t = pd.concat([pd.read_parquet(f, columns=["clip_i"]) for f in sorted((run / "triplets").glob("*.parquet"))])
    return float(t["clip_i"].median())


def _expected(run: Path, thr: float) -> dict[str, dict[str, list[str]]]:
    """config -> split -> ids that a `clip_i >= thr` policy keeps, in the run's order, from the
    shards with pandas: an editing sample by its own stored clip_i (meta.scores), a triplet row
    by its clip_i column; other tasks all."""
    out: dict[str, dict[str, list[str]]] = {}
    for f in sorted((run / "data").glob("*.parquet")):
        split = f.name.split("-")[0]
        d = pd.read_parquet(f, columns=["id", "task", "meta"])
        clip_i = d["meta"].map(lambda m: (json.loads(m).get("scores") or {}).get("clip_i"))
        keep = (d["task"] != "editing") | (clip_i.astype(float) >= thr)
        for task, i in zip(d["task"][keep], d["id"][keep]):
            out.setdefault(task, {}).setdefault(split, []).append(i)
    for f in sorted((run / "triplets").glob("*.parquet")):
        t = pd.read_parquet(f, columns=["id", "clip_i"])
        ids = list(t["id"][t["clip_i"] >= thr])
        if ids:
            out.setdefault("triplets", {}).setdefault(f.name.split("-")[0], []).extend(ids)
    return out


def _digests(root: Path, mtime: bool = False) -> dict[str, tuple]:
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             p.stat().st_mtime_ns if mtime else 0) for p in files_under(root)}


def _card_removed(text: str) -> dict[tuple[str, str], str]:
    """(edit type, rule) -> the card's `removed` cell, from its per-rule table."""
    section = text.split("What each rule removed", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    return {(r[0], r[2]): r[4] for r in rows[1:]}


def test_policy_publish_keeps_exactly_the_ids_a_threshold_keeps(run_copy, tmp_path):  # noqa: F811
    import datasets

    thr = _median_clip_i(run_copy)
    want = _expected(run_copy, thr)
    n_trip = sum(len(v) for v in want["triplets"].values())
    assert 0 < n_trip < 48, "the median threshold keeps some triplets and removes others"
    rec = publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{tmp_path / 'hub'}",
                                               policy=str(_policy_file(tmp_path, thr))))
    assert rec["status"] == "complete"
    repo = tmp_path / "hub" / REPO_ID
    for config, splits in want.items():
        ds = datasets.load_dataset(str(repo), config, cache_dir=str(tmp_path / "cache"))
        assert {s: ds[s]["id"] for s in ds} == splits, config
    # editing: both directions and both languages of each kept triplet, 4 samples per built triplet
    assert sum(len(v) for v in want["editing"].values()) >= 4 * n_trip
    sel = json.loads((run_copy / "publish" / "dir--nexus-test--filtered" / "selection" / "selection.json").read_text())
    assert sel["triplets_out"] - sel["edit_types"].get("unknown", {}).get("rows_out", 0) == n_trip
    text = (repo / "README.md").read_text(encoding="utf-8")
    assert "**This publication is filtered**" in text and "unfiltered**" not in text
    row = next(line for line in text.splitlines() if line.startswith("| `triplets` |"))
    assert row.split(" | ")[2] == ", ".join(f"{s} {len(want['triplets'][s])}" for s in ("train", "test")
                                            if s in want["triplets"])


def test_select_folder_publishes_the_same_bytes_and_the_card_has_its_counts(run_copy, tmp_path):  # noqa: F811
    from nexus_gen.edit.select import select_run

    hub_a, hub_b = tmp_path / "a", tmp_path / "b"
    publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{hub_a}", policy="default"))
    sel_dir = tmp_path / "selected"
    select_run(run_copy, "default", sel_dir)
    rec = publish_run(sel_dir, PublishOptions(repo_id=REPO_ID, hub=f"dir:{hub_b}"))
    assert rec["selection"] == str(sel_dir.resolve()) and rec["run"] == str(run_copy.resolve())
    assert not (sel_dir / "publish").exists(), "the select folder stays a loadable shard folder"
    a, b = _digests(hub_a / REPO_ID), _digests(hub_b / REPO_ID)
    assert a == b and any(k.startswith("triplets/") for k in a)
    selection = json.loads((sel_dir / "selection.json").read_text())
    card = _card_removed((hub_b / REPO_ID / "README.md").read_text(encoding="utf-8"))
    want = {(et, r["name"]): "skipped (no such score stored)" if r["skipped"] else str(r["removed"])
            for et, rep in selection["edit_types"].items() for r in rep["rules"]}
    assert card == want and any(v not in ("0", "skipped (no such score stored)") for v in card.values())
    text = (hub_b / REPO_ID / "README.md").read_text(encoding="utf-8")
    for et, rep in selection["edit_types"].items():
        assert f"| {et} | {rep['policy']} | {rep['rows_in']} | {rep['rows_out']} |" in text


@pytest.mark.slow
def test_rerun_reuses_staging_and_a_new_policy_replaces_the_files(run_copy, tmp_path):  # noqa: F811
    hub = tmp_path / "hub"
    repo = hub / REPO_ID
    keep_half = str(_policy_file(tmp_path, _median_clip_i(run_copy)))
    first = publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{hub}", policy=keep_half))
    assert first["staging"] == "staged"
    before = _digests(repo, mtime=True)
    staged = Path(first["staged"])
    again = publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{hub}", policy=keep_half))
    assert again["staging"] == "reused" and again["uploaded"] == [] and again["deleted"] == []
    assert _digests(repo, mtime=True) == before
    # a staged file changed behind our back: not reused, staged again (same bytes, nothing uploaded)
    (staged / "README.md").write_text("tampered", encoding="utf-8")
    third = publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{hub}", policy=keep_half))
    assert third["staging"] == "staged" and third["uploaded"] == [] and _digests(repo, mtime=True) == before
    # a policy that keeps no triplet: the editing and triplets configs' files and the triplet
    # figures are deleted, generation/understanding stay as they were
    none = str(_policy_file(tmp_path, 2.0, "keep_none"))
    rec = publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{hub}", policy=none))
    assert rec["staging"] == "staged" and rec["uploaded"] == ["README.md"]
    assert sorted(rec["deleted"]) == sorted(k for k in before if k.split("/")[0] in ("editing", "triplets", "assets"))
    assert set(_digests(repo)) == set(rec["files"])
    assert "0 kept" in (repo / "README.md").read_text(encoding="utf-8")


def _cli(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("policy, expect", [
    ("no_such_policy", "--policy 'no_such_policy': no filter policy file at"),
    ("BAD_FILE", "--policy"),
])
def test_a_bad_policy_is_refused_before_any_work(policy, expect, run_copy, tmp_path):  # noqa: F811
    if policy == "BAD_FILE":
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: bad\nrules:\n  - {column: clip_i, op: '>=', value: high}\n", encoding="utf-8")
        policy = str(bad)
    hub = tmp_path / "hub"
    r = _cli("publish", str(run_copy), "--repo-id", REPO_ID, "--hub", f"dir:{hub}", "--policy", policy)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and expect in r.output
    if policy.endswith("bad.yaml"):
        assert "bad.yaml" in r.output and "needs a number" in r.output
    assert not hub.exists() and not (run_copy / "publish").exists()


@pytest.mark.parametrize("case, expect", [
    ("missing", "which no longer exists"),
    ("rebuilt", "now has recipe hash 'not-the-same'"),
    ("with_policy", "already filtered"),
])
def test_a_stale_selection_is_refused_before_any_work(case, expect, run_copy, tmp_path):  # noqa: F811
    from nexus_gen.edit.select import select_run

    sel_dir = tmp_path / "selected"
    select_run(run_copy, "default", sel_dir)
    args = ["--policy", "default"] if case == "with_policy" else []
    if case == "missing":
        shutil.rmtree(run_copy)
    elif case == "rebuilt":
        record = json.loads((run_copy / "run.json").read_text())
        record["recipe_hash"] = "not-the-same"
        (run_copy / "run.json").write_text(json.dumps(record))
    hub = tmp_path / "hub"
    r = _cli("publish", str(sel_dir), "--repo-id", REPO_ID, "--hub", f"dir:{hub}", *args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and expect in r.output and str(sel_dir) in r.output
    assert not hub.exists() and not (run_copy / "publish").exists() and not (sel_dir / "publish").exists()
