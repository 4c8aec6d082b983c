"""Embedding pre-compute: shapes, keyed by sample id, resumable by unit, teacher-forced predictions
equal to the model's prediction of the same conversation, manifest counts and hashes, bad inputs."""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ar_fixtures import scenes_run, tiny_ar
from nexus_gen.data.shards import iter_samples
from nexus_gen.train import precompute as pc
from nexus_gen.train.embedding_store import EmbeddingStore

N, M, D = 16, 64, 64


def _shards():
    return sorted((scenes_run() / "data").glob("train-*.parquet"))


def _ids(task):
    return [s["id"] for s in iter_samples(_shards()) if s["task"] == task]


@pytest.fixture()
def counting(monkeypatch):
    calls = []
    real = pc.compute_unit

    def spy(unit, *a, **k):
        calls.append(unit.file)
        return real(unit, *a, **k)

    monkeypatch.setattr(pc, "compute_unit", spy)
    return calls


def test_gen_targets_resume_and_manifest(tmp_path, counting):
    m = tiny_ar()
    out = tmp_path / "gen"
    man = pc.precompute("gen", [scenes_run()], out, m, chunk_size=5, batch_size=4)
    ids = _ids("generation")
    assert man["counts"] == {"samples": len(ids), "embedded": len(ids), "skipped": 0}
    store = EmbeddingStore(out)
    assert store.ids() == sorted(ids)
    t = store.get(ids[0])
    assert set(t) == {"target"} and t["target"].shape == (N, D)
    # the target is the frozen ViT + merger of the image's 112 px centre crop (stock modules)
    sample = next(s for s in iter_samples(_shards()) if s["id"] == ids[0])
    from nexus_gen.models.nexus_ar import square_image
    from nexus_gen.train.stage_ar import open_image

    im = square_image(open_image(sample["images"][0]), 112, "crop")
    px = m.processor.image_processor(images=[im], return_tensors="pt", do_resize=False)
    with torch.no_grad():
        ref = m.model.visual(px["pixel_values"], grid_thw=px["image_grid_thw"]).pooler_output
    assert torch.allclose(t["target"], ref, atol=1e-6)
    # the manifest lists every unit with its ids and the sha256 of its file
    mf = json.loads((out / "manifest.json").read_text())
    assert sorted(i for u in mf["units"] for i in u["ids"]) == sorted(ids)
    for u in mf["units"]:
        assert u["sha256"] == hashlib.sha256((out / u["file"]).read_bytes()).hexdigest()
    n_units = len(mf["units"])
    assert len(counting) == n_units >= 2
    # a rerun computes nothing; deleting one unit recomputes only it, to the same bytes
    counting.clear()
    again = pc.precompute("gen", [scenes_run()], out, m, chunk_size=5, batch_size=4)
    assert counting == [] and again["computed"] == 0
    victim = mf["units"][1]
    (out / victim["file"]).unlink()
    again = pc.precompute("gen", [scenes_run()], out, m, chunk_size=5, batch_size=4)
    assert counting == [victim["file"]] and again["computed"] == 1
    assert hashlib.sha256((out / victim["file"]).read_bytes()).hexdigest() == victim["sha256"]


def test_edit_predictions_are_the_prefilled_forward(tmp_path):
    m = tiny_ar()
    out = tmp_path / "edit"
    man = pc.precompute("edit", [_shards()[0]], out, m, chunk_size=8, batch_size=3, limit=6)
    assert man["counts"]["samples"] == 6 and man["counts"]["embedded"] == 6
    store = EmbeddingStore(out)
    sid = store.ids()[2]
    e = store.get(sid)
    assert e["predicted"].shape == (N, D) and e["source"].shape == (M, D)
    sample = next(s for s in iter_samples(_shards()) if s["id"] == sid)
    from nexus_gen.models.nexus_ar import square_image
    from nexus_gen.train.stage_ar import open_image

    src = square_image(open_image(sample["images"][0]), 224, "resize")
    want = m.predict_image_embeds(sample["messages"], [src])[0]
    assert torch.allclose(e["predicted"], want, atol=1e-5)
    # and never depends on the target image
    other = open_image(sample["images"][0]).rotate(90)
    assert torch.equal(want, m.predict_image_embeds(sample["messages"], [src, other])[0])
    assert torch.allclose(e["source"], m.image_embeddings([src], 224, fit="resize")[0], atol=1e-6)


def test_shard_without_generation_samples_fails_before_work(tmp_path):
    table = pq.read_table(_shards()[0])
    edits = table.filter(pa.array([t == "editing" for t in table.column("task").to_pylist()]))
    pq.write_table(edits, tmp_path / "edits-only.parquet")
    with pytest.raises(pc.PrecomputeError, match=r"edits-only.parquet: no generation samples"):
        pc.plan_precompute("gen", [tmp_path / "edits-only.parquet"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(pc.PrecomputeError, match="no such file"):
        pc.plan_precompute("edit", [tmp_path / "missing"], tmp_path / "out")


def test_folder_from_another_model_is_refused(tmp_path):
    m = tiny_ar()
    out = tmp_path / "gen"
    pc.precompute("gen", [_shards()[0]], out, m, limit=2)
    other = type(m).from_pretrained(m.name_or_path).eval()
    with torch.no_grad():
        other.vision_head.weight.add_(1.0)
    with pytest.raises(pc.PrecomputeError, match="another model or mode"):
        pc.precompute("gen", [_shards()[0]], out, other, limit=2)
    with pytest.raises(pc.PrecomputeError, match="another model or mode"):
        pc.precompute("edit", [_shards()[0]], out, m, limit=2)


def test_checkpoint_from_another_config_fails_to_load(tmp_path):
    import shutil

    from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

    shutil.copytree(tiny_ar_dir(), tmp_path / "ar")
    cfg = json.loads((tmp_path / "ar" / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 32
    (tmp_path / "ar" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(pc.PrecomputeError, match=r"--ar .*cannot load"):
        pc.load_ar_model(str(tmp_path / "ar"))


def test_the_store_reads_the_manifest_and_knows_an_unfinished_precompute(tmp_path, caplog):
    """A finished pre-compute's store is indexed from its manifest (no shard opened) and says so;
    a unit the manifest lists but the folder lacks is an error; without a manifest (a pre-compute
    not finished) the store still reads its shards and warns."""
    import logging
    import shutil

    import safetensors

    out = tmp_path / "emb"
    manifest = pc.precompute("gen", [scenes_run() / "data"], out, tiny_ar(), chunk_size=4)
    opened = []
    real = safetensors.safe_open
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safetensors, "safe_open", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
        store = EmbeddingStore(out)
    assert store.complete and opened == [] and len(store) == manifest["counts"]["embedded"]
    gone = out / manifest["units"][0]["file"]
    shutil.move(gone, tmp_path / "aside")
    with pytest.raises(ValueError, match="unit files its manifest.json lists are missing"):
        EmbeddingStore(out)
    shutil.move(tmp_path / "aside", gone)
    (out / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING, logger="nexus_gen.train.embedding_store"):
        unfinished = EmbeddingStore(out)
    assert not unfinished.complete and unfinished.ids() == store.ids()
    assert any("has not finished" in r.getMessage() for r in caplog.records)
