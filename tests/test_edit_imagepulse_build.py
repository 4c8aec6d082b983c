"""The imagepulse backend through `build`: recipe settings validated, model ids checked before
any work, rejects counted with their reason, detector verdict and score columns in the table."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from build_fixtures import write_recipe
from conftest import EXAMPLE, REPO
from nexus_gen.edit.recipe import RecipeError, load_recipe

PHOTOS = REPO / "datasets_spec" / "examples" / "nexus_gen_example" / "assets" / "example_datasets" / "images"


def _recipe(tmp_path, **over):
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(small)
    wide = tmp_path / "wide.png"
    Image.open(EXAMPLE / "cat.png").convert("RGB").crop((0, 300, 1024, 684)).save(wide)
    r = {"name": "ip", "seed": 2,
         "sources": [{"kind": "images", "name": "photos", "size": 64,
                      "paths": [str(PHOTOS / "gen_0.png"), str(PHOTOS / "edit_0_0.png"), str(small)]},
                     {"kind": "images", "name": "wide", "size": 96, "aspect": "keep", "paths": [str(wide)]}],
         "edits": {"add": 2, "remove": 3, "style": 1},
         "models": {"editor": "imagepulse", "detector": "tiny", "inpainter": "tiny", "stylizer": "tiny",
                    "clip": "tiny", "dino": "tiny"},
         "imagepulse": {"inpaint_steps": 2, "style_steps": 2, "detector_threshold": 0.05,
                        "add_methods": ["reverse"]},
         "scoring": {"metrics": ["clip_t", "clip_i", "l1", "l1_masked"]},
         "shard_size": 8, "languages": ["en", "zh"]}
    r.update(over)
    return r


def test_build_with_tiny_models(tmp_path):
    from nexus_gen.edit.build import build

    rec = write_recipe(tmp_path, _recipe(tmp_path))
    out = tmp_path / "run"
    record = build(rec, out)
    c = record["counts"]
    assert record["status"] == "complete" and record["reconciled"]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    small = [x for x in rejects if x["path"].endswith("small.png")]
    assert small and all("40x40: too small to inpaint" in x["reason"] for x in small)
    assert c["triplets"] >= 3
    table = pq.read_table(next((out / "triplets").glob("*.parquet"))).to_pylist()
    assert {"object_in_mask", "object_present", "detector_score"} <= set(table[0])
    for row in table:
        lin = json.loads(row["lineage"])["backend"]
        if row["edit_type"] in ("add", "remove"):
            verdict = row["object_in_mask" if row["edit_type"] == "add" else "object_present"]
            assert isinstance(verdict, bool) and 0.0 <= row["detector_score"] <= 1.0
            assert verdict == (row["detector_score"] >= 0.05)
            assert lin["models"]["inpainter"].startswith("tiny:")
        else:
            assert row["detector_score"] is None and row["style"]
        img = Image.open(__import__("io").BytesIO(row["source_image"]["bytes"]))
        if row["source"] == "wide":
            assert img.size == (96, 32)  # 96 x 384/1024*96 = 36 -> 32 (multiple of 16)
    assert any(r["source"] == "wide" for r in table)


def test_unloadable_model_fails_before_any_work(tmp_path):
    from nexus_gen.edit.build import RunError, prepare_run

    r = _recipe(tmp_path)
    r["models"]["inpainter"] = "nobody/no-such-inpainter"
    r["models"]["detector"] = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    rec = write_recipe(tmp_path, r)
    with pytest.raises(RunError) as ei:
        prepare_run(rec, tmp_path / "run")
    msg = str(ei.value)
    assert "models.inpainter: 'nobody/no-such-inpainter' cannot be loaded" in msg
    assert "model_index.json" in msg and "models.detector" in msg and "config.json missing" in msg
    assert not (tmp_path / "run").exists()


def test_paper_recipe_names_ids_it_cannot_load(tmp_path):
    from nexus_gen.edit.build import RunError, prepare_run

    with pytest.raises(RunError) as ei:
        prepare_run("imagepulse", tmp_path / "run")
    for hub_id in ("IDEA-Research/grounding-dino-base", "black-forest-labs/FLUX.1-Fill-dev",
                   "black-forest-labs/FLUX.1-dev"):
        assert hub_id in str(ei.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("over, key", [
    ({"imagepulse": {"style_strength": 0}}, "imagepulse.style_strength"),
    ({"imagepulse": {"style_strength": 1.5}}, "imagepulse.style_strength"),
    ({"imagepulse": {"add_methods": []}}, "imagepulse.add_methods"),
    ({"imagepulse": {"colour": 1}}, "imagepulse.colour"),
])
def test_imagepulse_settings_validated(tmp_path, over, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(write_recipe(tmp_path, _recipe(tmp_path, **over)))


def test_imagepulse_settings_need_the_backend(tmp_path):
    from build_fixtures import small_recipe

    with pytest.raises(RecipeError, match="imagepulse: settings need models.editor imagepulse"):
        load_recipe(write_recipe(tmp_path, small_recipe(imagepulse={"style_strength": 0.5})))
    src = [{"kind": "images", "paths": [str(PHOTOS / "gen_0.png")], "aspect": "keep"}]
    with pytest.raises(RecipeError, match="aspect keep needs models.editor imagepulse"):
        load_recipe(write_recipe(tmp_path, small_recipe(sources=src)))


def test_scenes_run_stores_no_new_keys(tmp_path):
    """A recipe that does not use the keys added for imagepulse stores (and hashes) as before."""
    from build_fixtures import small_recipe
    from nexus_gen.edit.build import prepare_run

    run = prepare_run(write_recipe(tmp_path, small_recipe()), tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "recipe.json").read_text(encoding="utf-8"))["recipe"]
    assert "imagepulse" not in stored and "segmenter" not in stored["models"]
    assert all("aspect" not in s for s in stored["sources"])
    assert run.plan.planned > 0
