"""Sources beyond files in one folder: folders read recursively, a streamed `datasets` dataset
with an image column, and images generated from prompts by a text-to-image pipeline (tiny)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash
from PIL import Image

from build_fixtures import write_recipe
from conftest import EXAMPLE
from nexus_gen.edit.plan import make_plan
from nexus_gen.edit.recipe import load_recipe


def _models(**over):
    return {"editor": "imagepulse", "detector": "tiny", "inpainter": "tiny", "stylizer": "tiny", **over}


def _recipe(sources, **over):
    r = {"name": "src", "seed": 1, "sources": sources, "edits": {"style": 2}, "models": _models(),
         "imagepulse": {"inpaint_steps": 2, "style_steps": 2}, "scoring": {"metrics": ["l1"]},
         "shard_size": 8}
    r.update(over)
    return r


def _plan(tmp_path, recipe):
    rec, path = load_recipe(write_recipe(tmp_path, recipe))
    return make_plan(rec, path.parent)


def test_images_folder_recursive(tmp_path):
    root = tmp_path / "pics"
    (root / "a" / "b").mkdir(parents=True)
    cat = Image.open(EXAMPLE / "cat.png").convert("RGB").resize((80, 80))
    cat.save(root / "top.png")
    cat.rotate(90).save(root / "a" / "mid.jpg")
    cat.rotate(180).save(root / "a" / "b" / "deep.bmp")
    (root / "a" / "notes.txt").write_text("not an image")
    flat = _plan(tmp_path / "f", _recipe([{"kind": "images", "paths": [str(root)], "size": 64}]))
    deep = _plan(tmp_path / "d", _recipe([{"kind": "images", "paths": [str(root)], "size": 64,
                                           "recursive": True}]))
    names = lambda plan: sorted(Path(s.path).name for sh in plan.shards for s in sh.sources)
    assert names(flat) == ["top.png"]
    assert names(deep) == ["deep.bmp", "mid.jpg", "top.png"]
    keys = {Path(s.path).name: s.key for sh in deep.shards for s in sh.sources}
    assert keys["deep.bmp"] == xxhash.xxh3_128_hexdigest((root / "a" / "b" / "deep.bmp").read_bytes())


@pytest.fixture
def parquet_dataset(tmp_path):
    import datasets

    imgs = [Image.open(EXAMPLE / "cat.png").convert("RGB").resize((96, 72)).rotate(a) for a in (0, 90, 180)]
    ds = datasets.Dataset.from_dict({"picture": imgs, "text": ["a cat", "a cat turned", "upside down"]},
                                    features=datasets.Features({"picture": datasets.Image(),
                                                                "text": datasets.Value("string")}))
    p = tmp_path / "data" / "train.parquet"
    p.parent.mkdir()
    ds.to_parquet(str(p))
    return p


def test_hf_dataset_source_streamed(tmp_path, parquet_dataset):
    from nexus_gen.edit.sources import fit_source, read_source_image

    plan = _plan(tmp_path, _recipe([{"kind": "hf_dataset", "path": str(parquet_dataset), "count": 2,
                                     "image_column": "picture", "caption_column": "text", "size": 64}]))
    refs = [s for sh in plan.shards for s in sh.sources]
    stored = pq.read_table(parquet_dataset).to_pylist()
    want = {xxhash.xxh3_128_hexdigest(r["picture"]["bytes"]): r for r in stored[:2]}
    assert {r.key for r in refs} == set(want)  # the first `count` rows, keyed by their bytes
    for r in refs:
        assert r.caption == want[r.key]["text"]
        img = read_source_image(r)
        ref = Image.open(io.BytesIO(want[r.key]["picture"]["bytes"])).convert("RGB")
        assert np.array_equal(np.asarray(img), np.asarray(ref))
    from nexus_gen.edit.backends.imagepulse_backend import ImagePulseBackend
    from nexus_gen.edit.recipe import ImagePulseParams
    from nexus_gen.edit.backends.base import EditSpec

    bk = ImagePulseBackend(_models(), ImagePulseParams(style_steps=2))
    out = bk.edit(refs[0], EditSpec("style", "watercolor"), seed=3)
    assert out.source.tobytes() == fit_source(read_source_image(refs[0]), 64).tobytes()
    assert out.lineage["dataset"]["row"] in (0, 1)


def test_hf_dataset_bad_column_fails_at_planning(tmp_path, parquet_dataset):
    from nexus_gen.edit.recipe import RecipeError

    with pytest.raises(RecipeError, match="no column 'image'.*picture"):
        _plan(tmp_path, _recipe([{"kind": "hf_dataset", "path": str(parquet_dataset), "count": 2}]))


def test_text2image_source(tmp_path):
    import torch
    from diffusers import DiffusionPipeline

    from nexus_gen.edit.build import build
    from nexus_gen.models.tiny import tiny_sd_dir

    src = {"kind": "text2image", "name": "gen", "prompts": ["a red apple on a table", "a dog"],
           "model": "tiny", "size": 64, "steps": 2}
    plan = _plan(tmp_path / "a", _recipe([src]))
    refs = [s for sh in plan.shards for s in sh.sources]
    assert [r.caption for r in refs] == src["prompts"]
    assert all(r.generated["model"] == "tiny:tiny-stable-diffusion-v1" for r in refs)
    other = _plan(tmp_path / "b", _recipe([{**src, "prompts": ["a red apple on a table", "a cat"]}]))
    other_keys = [s.key for sh in other.shards for s in sh.sources]
    assert other_keys[0] == refs[0].key and other_keys[1] != refs[1].key  # prompt + seed + model
    run = tmp_path / "run"
    rec = write_recipe(tmp_path / "r", _recipe([src], edits={"style": 1}))
    record = build(rec, run)
    assert record["counts"]["triplets"] == 1
    row = pq.read_table(next((run / "triplets").glob("*.parquet"))).to_pylist()[0]
    gen = json.loads(row["lineage"])["backend"]["generated"]
    assert gen["model"] == "tiny:tiny-stable-diffusion-v1" and gen["prompt"] in src["prompts"]
    # the source image is what the pipeline makes for that prompt and seed
    pipe = DiffusionPipeline.from_pretrained(str(tiny_sd_dir()))
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        want = pipe(prompt=gen["prompt"], height=64, width=64, num_inference_steps=2, output_type="pil",
                    generator=torch.Generator("cpu").manual_seed(gen["seed"])).images[0].convert("RGB")
    got = Image.open(io.BytesIO(row["source_image"]["bytes"])).convert("RGB")
    assert np.array_equal(np.asarray(got), np.asarray(want))


def test_text2image_unloadable_model_fails_before_work(tmp_path):
    from nexus_gen.edit.build import RunError, prepare_run

    src = {"kind": "text2image", "prompts": ["a dog"], "model": "paper"}
    with pytest.raises(RunError, match=r"sources.0.model: 'paper -> black-forest-labs/FLUX.1-dev' cannot be loaded"):
        prepare_run(write_recipe(tmp_path, _recipe([src])), tmp_path / "run")
    assert not (tmp_path / "run").exists()
