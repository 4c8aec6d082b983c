"""`nexus-gen select`: a policy applied to a real (tiny) build run's stored scores. The kept
triplets are compared with a pandas reference computed from the run's triplet table, the
written shards keep every direction and language of a kept triplet and none of a dropped one,
splits survive into shards `datasets` reads, and bad runs, folders and policies are one-line
errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_fixtures import cli, edit_row, gen_row, last_json, write_jsonl, write_photo

RECIPE = """
name: tiny-select
seed: 3
sources:
  - {kind: scenes, name: scenes, count: 8, size: 64, max_objects: 3}
  - {kind: dataset, name: pairs, format: nexus-gen-jsonl, inputs: [pairs.jsonl], images_root: imgs}
edits: {add: 4, remove: 4, style: 4}
models: {editor: scenes, detector: scenes-pixel, clip: tiny}
scoring: {metrics: [clip_t, clip_i, clip_dir, l1, l1_masked]}
shard_size: 4
outputs: {generation: true, understanding: true, understanding_per_source: 1}
languages: [en, zh]
splits: {train: 0.5, test: 0.5}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished build: 8 scenes x add/remove/style, both directions and languages, generation
    and understanding samples, and a mixed-in dataset of two edit pairs and one generation row."""
    from nexus_gen.edit.build import build

    d = tmp_path_factory.mktemp("select")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        write_photo(d / "imgs" / f"{name}.png", name, size=48)
    write_jsonl(d / "pairs.jsonl", [edit_row("p1", "astronaut.png", "coffee.png"),
                                    edit_row("p2", "chelsea.png", "rocket.png", "add a rocket"),
                                    gen_row("g1", "coffee.png")])
    (d / "tiny.yaml").write_text(RECIPE, encoding="utf-8")
    record = build(d / "tiny.yaml", d / "run")
    assert record["status"] == "complete" and record["counts"]["triplets"] == 12
    return d / "run"


def _triplets(run: Path) -> pd.DataFrame:
    """The reference: the run's triplet table read with pandas (no images)."""
    cols = ["id", "split", "edit_type", "l1_inside", "clip_t", "clip_i"]
    return pd.concat([pd.read_parquet(f, columns=cols) for f in sorted((run / "triplets").glob("*.parquet"))],
                     ignore_index=True)


def _samples(folder: Path) -> pd.DataFrame:
    """Every sample of a shard folder: id, task, language, the split in its file name, and meta."""
    rows = []
    for f in sorted(folder.glob("*.parquet")):
        for r in pq.read_table(f, columns=["id", "task", "language", "meta"]).to_pylist():
            meta = json.loads(r["meta"])
            rows.append({**r, "file_split": f.name.split("-")[0], "meta_split": meta.get("split"),
                         "triplet_id": meta.get("triplet_id"), "direction": meta.get("direction")})
    return pd.DataFrame(rows)


def _policy(path: Path, rules: list[str]) -> Path:
    path.write_text("name: hand\nrules:\n" + "".join(f"  - {r}\n" for r in rules), encoding="utf-8")
    return path


def _select(run: Path, policy, out: Path):
    res = cli("select", run, *(["--policy", policy] if policy else []), "--out", out)
    assert res.exit_code == 0, res.output
    return res, json.loads((out / "selection.json").read_text(encoding="utf-8"))


def test_kept_triplets_equal_a_pandas_reference_with_all_their_samples(run, tmp_path):
    trip = _triplets(run)
    a, b = trip["l1_inside"].median(), trip["clip_t"].quantile(0.3)
    pol = _policy(tmp_path / "p.yaml", [f"{{name: changed, column: l1_inside, op: '>=', value: {a}}}",
                                        f"{{name: matches, column: clip_t, op: '>=', value: {b}}}",
                                        "{name: cs, column: clipscore, op: '>=', value: 0.1, if_missing: skip}"])
    out = tmp_path / "out"
    res, rep = _select(run, pol, out)

    ok1, ok2 = trip["l1_inside"] >= a, trip["clip_t"] >= b
    want = set(trip.loc[ok1 & ok2, "id"])
    assert 0 < len(want) < len(trip)
    src, got = _samples(run / "data"), _samples(out)
    edits = got[got.task == "editing"]
    built = set(trip["id"])
    assert set(edits.triplet_id) & built == want
    # every direction and language of a kept triplet: the same samples as in the run, none of a dropped one
    src_kept = src[(src.task == "editing") & src.triplet_id.isin(want)]
    assert sorted(edits[edits.triplet_id.isin(built)].id) == sorted(src_kept.id)
    for _, g in edits[edits.triplet_id.isin(built)].groupby("triplet_id"):
        assert sorted(zip(g.direction, g.language)) == sorted(
            (d, lang) for d in ("forward", "reverse") for lang in ("en", "zh"))
    # the mixed-in pairs have no mask, so no l1_inside: a missing score fails the rule
    assert not set(edits.id) & {"p1", "p2"}
    # non-editing samples pass through, each in its split's shards
    other = src[src.task != "editing"]
    assert sorted(got[got.task != "editing"].id) == sorted(other.id) and "g1" in set(other.id)
    assert (got.file_split == got.meta_split).all()
    split_of = dict(zip(src.id, src.file_split))
    assert all(split_of[i] == s for i, s in zip(got.id, got.file_split))
    assert set(got.file_split) == {"train", "test"}
    # what each rule removed, per edit type, as pandas counts it (rules apply in order)
    for et, g in trip.groupby("edit_type"):
        r1, r2 = g["l1_inside"] >= a, g["clip_t"] >= b
        e = rep["edit_types"][et]
        assert e["policy"] == "hand" and (e["rows_in"], e["rows_out"]) == (len(g), int((r1 & r2).sum()))
        assert [(x["name"], x["removed"], x["skipped"]) for x in e["rules"]] == [
            ("changed", int((~r1).sum()), False), ("matches", int((r1 & ~r2).sum()), False), ("cs", 0, True)]
        assert e["skipped_rules"] == ["cs"]
    assert rep["edit_types"]["unknown"]["rows_in"] == 2  # p1, p2: no edit type in their meta
    assert rep["edit_types"]["unknown"]["rules"][0]["removed"] == 2
    assert set(rep["skipped_rules"]) == {"add", "remove", "style", "unknown"}
    stored = json.loads((run / "recipe.json").read_text(encoding="utf-8"))
    assert rep["recipe_hash"] == stored["recipe_hash"] and rep["run"] == str(run.resolve())
    assert rep["passthrough"] == other.task.value_counts().to_dict()
    assert last_json(res) == {"triplets_in": len(trip) + 2, "triplets_out": len(want), "samples": len(got)}
    out_text = res.stdout
    assert "cs" in out_text and "SKIPPED for every row" in out_text
    # `datasets` reads the selection with the run's splits
    import datasets

    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    assert set(ds) == {"train", "test"}
    for split in ("train", "test"):
        assert sorted(ds[split]["id"]) == sorted(got[got.file_split == split].id)


def test_auto_uses_each_edit_types_policy_and_a_rerun_replaces_the_selection(run, tmp_path):
    from nexus_gen.scoring.policy import policy_for_edit_type

    out = tmp_path / "out"
    _select(run, _policy(tmp_path / "all.yaml", ["{column: l1, op: '>=', value: 0}"]), out)
    res, rep = _select(run, None, out)
    assert rep["policies"] == {et: policy_for_edit_type(et).name for et in ("add", "remove", "style", "unknown")}
    assert rep["policy"].startswith("auto")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(s["file"] for s in manifest["shards"])
    assert sorted(_samples(out).id) == sorted(
        i for f in manifest["shards"] for i in pq.read_table(out / f["file"], columns=["id"])["id"].to_pylist())
    assert not (out / ".staging").exists()
    _, again = _select(run, None, tmp_path / "again")  # same inputs, same bytes
    assert json.loads((tmp_path / "again" / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert again == rep


def test_a_policy_that_removes_everything_says_so(run, tmp_path):
    out = tmp_path / "none"
    res, rep = _select(run, _policy(tmp_path / "none.yaml", ["{name: never, column: l1, op: '>', value: 1000000000}"]), out)
    src = _samples(run / "data")
    assert "removed every triplet" in res.stdout and rep["removed_everything"] is True
    assert last_json(res) == {"triplets_in": len(_triplets(run)) + 2, "triplets_out": 0,
                              "samples": int((src.task != "editing").sum())}
    assert (_samples(out).task != "editing").all()


def _error(res) -> str:
    assert res.exit_code != 0
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    return res.output


def test_bad_runs_folders_and_policies_are_one_line_errors(run, tmp_path):
    good = _policy(tmp_path / "p.yaml", ["{column: l1, op: '>=', value: 0}"])
    partial = tmp_path / "partial"
    shutil.copytree(run, partial, ignore=shutil.ignore_patterns("*.parquet"))
    record = json.loads((partial / "run.json").read_text(encoding="utf-8"))
    (partial / "run.json").write_text(json.dumps({**record, "status": "partial"}), encoding="utf-8")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine", encoding="utf-8")
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    bad_op = _policy(tmp_path / "bad.yaml", ["{column: l1, op: '=>', value: 0}"])
    needs = _policy(tmp_path / "needs.yaml", ["{column: clipscore, op: '>=', value: 0.1}"])
    cases = [
        (tmp_path / "nowhere", good, tmp_path / "o1", "does not exist"),
        (tmp_path, good, tmp_path / "o2", "not a build run"),
        (partial, good, tmp_path / "o3", "not a finished build"),
        (run, good, run, "the run"),
        (run, good, run / "data", "inside it"),
        (run, good, full, "not empty and holds no selection"),
        (run, good, afile, "is a file"),
        (run, "no-such-policy", tmp_path / "o4", "no filter policy"),
        (run, bad_op, tmp_path / "o5", "'op' must be one of"),
        (run, needs, tmp_path / "o6", "clipscore"),
    ]
    for r, pol, out, msg in cases:
        text = _error(cli("select", r, "--policy", pol, "--out", out))
        assert msg in text, (r, out, text)
        assert len([ln for ln in text.splitlines() if ln.strip()]) == 1, text
    for name in ("o1", "o2", "o3", "o4", "o5"):
        assert not (tmp_path / name).exists()  # refused before any work
    assert not (tmp_path / "o6" / "manifest.json").exists()
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt"]
    assert (run / "data" / "manifest.json").is_file()
