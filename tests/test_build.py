"""The build engine through plain library calls: outputs, splits, determinism, bad inputs,
resume and reruns (the flow, Dask and a real SIGKILL are in test_build_flow.py)."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from build_fixtures import small_recipe, write_recipe
from nexus_gen.edit.build import RunError, build, prepare_run


def _table(folder: Path) -> list[dict]:
    man = json.loads((folder / "manifest.json").read_text())
    return [r for s in man["shards"] for r in pq.read_table(folder / s["file"]).to_pylist()]


def _samples(run: Path) -> list[dict]:
    rows = _table(run / "data")
    for r in rows:
        r["meta"] = json.loads(r["meta"])
    return rows


def _pixels(b: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("build")
    recipe = write_recipe(d, small_recipe())
    record = build(recipe, d / "run")
    return recipe, d / "run", record


def test_counts_reconcile_and_files(small_run):
    _, run, record = small_run
    c = record["counts"]
    assert record["status"] == "complete" and record["reconciled"]
    assert c["planned"] == 18 == c["triplets"] + c["rejected"]
    for t in ("add", "remove", "style"):
        assert record["by_edit_type"][t]["planned"] == 6
    assert json.loads((run / "run.json").read_text()) == record
    samples = _samples(run)
    assert len(samples) == c["samples"]
    assert {s["task"] for s in samples} == {"editing", "generation", "understanding"}
    assert len(_table(run / "triplets")) == c["triplets"]


def test_both_directions_and_languages_match_triplet_table(small_run):
    _, run, _ = small_run
    trip = {t["id"]: t for t in _table(run / "triplets")}
    edits = [s for s in _samples(run) if s["task"] == "editing"]
    assert len(edits) == 4 * len(trip)
    for s in edits:
        t = trip[s["meta"]["triplet_id"]]
        fwd = s["meta"]["direction"] == "forward"
        src, tgt = (t["source_image"], t["target_image"]) if fwd else (t["target_image"], t["source_image"])
        assert s["images"][0]["bytes"] == src["bytes"] and s["images"][1]["bytes"] == tgt["bytes"]
        zh = s["language"] == "zh"
        assert s["id"].startswith("zh_") == zh and s["id"].endswith("_rev") != fwd
        key = ("instruction" if fwd else "reverse_instruction") + ("_zh" if zh else "")
        assert s["messages"][0]["content"] == f"<image> {t[key]}"
        assert s["messages"][1]["content"] == ("以下为编辑后的图像：<image>" if zh else "Here is the image: <image>")


def test_scores_against_pixels(small_run):
    """l1 and l1_outside recomputed with numpy from the stored images and mask; add/remove
    change no pixel outside their mask; the detector finds an added object."""
    _, run, _ = small_run
    for t in _table(run / "triplets"):
        a, b = _pixels(t["source_image"]["bytes"]), _pixels(t["target_image"]["bytes"])
        mask = np.asarray(Image.open(io.BytesIO(t["mask"]["bytes"]))) > 0
        diff = np.abs(a - b) / 255.0
        assert t["l1"] == pytest.approx(diff.mean(), abs=1e-6)
        if t["edit_type"] in ("add", "remove"):
            assert not diff[~mask].any()
            assert t["l1_outside"] == 0.0 and t["l1_inside"] > 0
        if t["edit_type"] == "add":
            assert t["object_in_mask"] is True and t["object_present"] is None
        if t["edit_type"] == "remove":
            assert t["object_present"] is False
        for c in ("clip_i", "clip_t", "clip_dir", "dino"):
            assert isinstance(t[c], float)
        lin = json.loads(t["lineage"])
        assert lin["recipe"] == "small" and lin["seed"] == t["seed"] and "torch" in lin["versions"]
        assert lin["models"]["clip"].startswith("clip-tiny@sha256:")


def test_splits_keep_each_source_in_one_split(small_run):
    _, run, record = small_run
    split_of: dict[str, set] = {}
    for s in _samples(run):
        split_of.setdefault(s["meta"]["source_key"], set()).add(s["meta"]["split"])
    assert all(len(v) == 1 for v in split_of.values())
    n_test = sum(v == {"test"} for v in split_of.values())
    assert n_test == 3  # round(0.3 * 10) sources
    man = json.loads((run / "data" / "manifest.json").read_text())
    assert set(man["splits"]) == {"train", "test"}
    import datasets

    ds = datasets.load_dataset(str(run / "data"))
    assert ds["test"].num_rows == man["splits"]["test"] and ds["train"].num_rows == man["splits"]["train"]
    assert isinstance(ds["train"][0]["images"][0], Image.Image)
    from nexus_gen.data.check import validate_shards

    assert validate_shards(run / "data").ok


def test_same_recipe_same_bytes(small_run, tmp_path):
    recipe, run, _ = small_run
    build(recipe, tmp_path / "again")
    for sub in ("data", "triplets"):
        for f in sorted((run / sub).iterdir()):
            assert f.read_bytes() == (tmp_path / "again" / sub / f.name).read_bytes(), f
    assert (run / "rejects.jsonl").read_bytes() == (tmp_path / "again" / "rejects.jsonl").read_bytes()


def test_finished_rerun_changes_nothing(small_run):
    recipe, run, record = small_run
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    again = build(recipe, run)
    assert again == record
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_changed_recipe_is_refused(small_run, tmp_path):
    _, run, _ = small_run
    other = write_recipe(tmp_path, small_recipe(seed=9))
    with pytest.raises(RunError, match="another recipe.*another --out"):
        prepare_run(other, run)


def test_resume_redoes_only_unfinished_shards(small_run, tmp_path):
    recipe, run, _ = small_run
    import shutil

    part = tmp_path / "part"
    shutil.copytree(run, part)
    (part / "run.json").unlink()
    # shard 1 was in flight: its marker and final files never appeared, its staging is half full
    for rel in (".done/train-00001.json", "data/train-00001.parquet", "triplets/train-00001.parquet",
                "rejects/train-00001.jsonl"):
        (part / rel).unlink()
    (part / ".staging" / "train-00001").mkdir(parents=True)
    (part / ".staging" / "train-00001" / "junk").write_bytes(b"half")
    kept = {p.name: p.stat().st_mtime_ns for p in (part / ".done").iterdir()}
    redone = []
    record = build(recipe, part, on_shard=lambda m: redone.append(m["shard_id"]))
    assert redone == ["train-00001"]
    assert {p.name: p.stat().st_mtime_ns for p in (part / ".done").iterdir() if p.name in kept} == kept
    assert (part / "data" / "manifest.json").read_bytes() == (run / "data" / "manifest.json").read_bytes()
    assert not (part / ".staging").exists()
    assert record["status"] == "complete"


def test_limit_then_continue(tmp_path):
    recipe = write_recipe(tmp_path, small_recipe(sources=[{"kind": "scenes", "count": 4, "size": 64}],
                                                 edits={"style": 4}, shard_size=1, splits={"train": 1.0},
                                                 outputs={}, scoring={"metrics": ["l1"]},
                                                 models={"editor": "scenes"}))
    first = build(recipe, tmp_path / "run", limit=2)
    assert first["status"] == "complete" and first["shards"]["done"] == 2
    assert json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())["total_rows"] > 0
    full = build(recipe, tmp_path / "run")
    assert full["shards"]["done"] == 4 and full["counts"]["triplets"] == 4


def test_bad_sources_become_rejects(tmp_path, example_dir):
    """A missing, a truncated and a non-image photo, and a backend error on one item: rejects
    with reasons; the shard and the run go on; counts reconcile."""
    pics = tmp_path / "pics"
    pics.mkdir()
    good = (example_dir / "cat.png").read_bytes()
    (pics / "good.png").write_bytes(good)
    (pics / "truncated.png").write_bytes(good[: len(good) // 2])
    (pics / "text.png").write_bytes(b"this is not an image")
    r = small_recipe(sources=[{"kind": "images", "name": "photos", "size": 64,
                               "paths": ["pics/good.png", "pics/truncated.png", "pics/text.png",
                                         "pics/missing.png"]},
                              {"kind": "scenes", "count": 2, "size": 64}],
                     edits={"add": 6, "style": 6}, shard_size=8, splits={"train": 1.0})
    recipe = write_recipe(tmp_path, r)
    from nexus_gen.edit.backends.scenes import ScenesBackend

    real = ScenesBackend.edit
    calls = {"n": 0}

    def flaky(self, source, spec, seed):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated backend failure")
        return real(self, source, spec, seed)

    ScenesBackend.edit = flaky
    try:
        record = build(recipe, tmp_path / "run")
    finally:
        ScenesBackend.edit = real
    c = record["counts"]
    assert c["planned"] == 12 == c["triplets"] + c["rejected"] and record["reconciled"]
    rejects = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == c["rejected"]
    reasons = " | ".join(r["reason"] for r in rejects)
    for name in ("truncated.png", "text.png", "missing.png", "simulated backend failure"):
        assert name in reasons
    assert not any("good.png" in r["reason"] for r in rejects)
    assert c["triplets"] > 0 and record["status"] == "complete"


def test_dataset_sources_mixed_in(tmp_path, example_dir):
    """Existing data (edit pairs with reverse instructions, in two files by glob, one bad line, a
    duplicate record) is converted, scored, split by its original source image and written beside
    built triplets; its rejects are counted once."""
    import shutil

    img = tmp_path / "data" / "img"
    img.mkdir(parents=True)
    for name in ("edit_0_0.png", "edit_0_1.png", "gen_0.png"):
        shutil.copy(example_dir / "assets" / "example_datasets" / "images" / name, img / name)
    rows = [{"id": "p1", "source_image": "img/edit_0_0.png", "target_image": "img/edit_0_1.png",
             "instruction": "Change the pan to a pot.", "reverse_instruction": "Change the pot to a pan.",
             "source_caption": "a rusty pan", "target_caption": "a steaming pot"},
            {"id": "p2", "source_image": "img/gen_0.png", "target_image": "img/edit_0_1.png",
             "instruction": "Make it a kitchen.", "reverse_instruction": "Make it a street."}]
    (tmp_path / "data" / "a.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n", encoding="utf-8")
    (tmp_path / "data" / "b.jsonl").write_text(json.dumps(rows[1]) + "\n" + json.dumps(rows[0]) + "\n",
                                               encoding="utf-8")  # p1 again: both directions duplicate
    r = small_recipe(sources=[{"kind": "scenes", "count": 4, "size": 64},
                              {"kind": "dataset", "name": "pairs", "format": "edit-pairs",
                               "inputs": ["data/*.jsonl"], "images_root": "data"}],
                     edits={"add": 2}, splits={"train": 0.5, "test": 0.5}, seed=1)
    record = build(write_recipe(tmp_path, r), tmp_path / "run")
    assert record["datasets"]["pairs"] == {"input": 7, "accepted": 4, "rejected": 3}
    rejects = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rejects] == ["a.jsonl", "b.jsonl", "b.jsonl"]
    assert all("duplicate id" in r["reason"] for r in rejects[1:])
    pairs = [s for s in _samples(tmp_path / "run") if s["source"] == "pairs"]
    assert sorted(s["id"] for s in pairs) == ["pairs_p1", "pairs_p1_rev", "pairs_p2", "pairs_p2_rev"]
    by_pair: dict[str, set] = {}
    for s in pairs:
        by_pair.setdefault(s["id"].removesuffix("_rev"), set()).add(s["meta"]["split"])
        assert isinstance(s["meta"]["scores"]["clip_i"], float)
    assert all(len(v) == 1 for v in by_pair.values())


def test_shipped_demo_recipe_builds_offline(tmp_path):
    record = build("demo", tmp_path / "demo")
    c = record["counts"]
    assert record["status"] == "complete" and c["planned"] == 48 == c["triplets"] + c["rejected"]
    assert set(record["by_split"]) == {"train", "test"}
    assert record["datasets"]["nexus-gen-example"]["accepted"] > 0
    assert {"photos", "scenes"} <= {s["source"] for s in _samples(tmp_path / "demo")}


def test_models_loaded_once_per_process(tmp_path, monkeypatch):
    import nexus_gen.models.loaded as loaded
    import nexus_gen.scoring.clip as clip_mod
    import nexus_gen.scoring.dino as dino_mod

    monkeypatch.setattr(loaded, "_MODELS", {})
    calls = []
    real_clip, real_dino = clip_mod.load_clip, dino_mod.load_dino
    monkeypatch.setattr(clip_mod, "load_clip", lambda *a, **k: calls.append("clip") or real_clip(*a, **k))
    monkeypatch.setattr(dino_mod, "load_dino", lambda *a, **k: calls.append("dino") or real_dino(*a, **k))
    recipe = write_recipe(tmp_path, small_recipe(sources=[{"kind": "scenes", "count": 3, "size": 64}],
                                                 edits={"add": 3}, shard_size=1, splits={"train": 1.0}))
    record = build(recipe, tmp_path / "run")
    assert record["shards"]["done"] == 3
    assert sorted(calls) == ["clip", "dino"]
    assert {k[0] for k in loaded.loaded_keys()} == {"clip", "dino"}


def test_grid_reads_only_the_shards_it_shows(small_run, tmp_path):
    """The triplet grid stops reading the table once every edit type has its rows (it used to
    read every shard, images included: the whole table of a large run, for 6 thumbnails)."""
    import shutil

    from nexus_gen.edit.grid import PAD, TEXT_H, TILE, triplet_grid

    _, run, _ = small_run
    man = json.loads((run / "triplets" / "manifest.json").read_text())
    per, seen, needed = 8 // 3, {}, 0  # 2 rows of each type, independently counted
    for s in man["shards"]:
        needed += 1
        for t in pq.read_table(run / "triplets" / s["file"], columns=["edit_type"])["edit_type"].to_pylist():
            seen[t] = seen.get(t, 0) + 1
        if len(seen) == 3 and min(seen.values()) >= per:
            break
    assert needed < len(man["shards"])  # else this run cannot tell
    part = tmp_path / "triplets"
    shutil.copytree(run / "triplets", part)
    for s in man["shards"][needed:]:  # what the grid must not open
        (part / s["file"]).unlink()
    png = triplet_grid(part)
    assert png == triplet_grid(run / "triplets")
    assert Image.open(io.BytesIO(png)).size[1] == 3 * per * (TILE + TEXT_H + PAD) + PAD
