"""`nexus-gen score` on the reference's own examples (converted with `nexus-gen convert`): every
task is handled (edits scored, generations scored against their prompt, understanding skipped and
counted), Chinese text goes to Chinese-CLIP or is left empty loudly, rows carry the group key the
shipped policies use, and selection runs on the output."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from flows.cli import app
from nexus_gen.data.shards import iter_samples
from nexus_gen.scoring import image_inputs as images_mod
from nexus_gen.scoring.chinese_clip import load_chinese_clip
from nexus_gen.scoring.clip import load_clip
from nexus_gen.scoring.edit_scorer import EditScorer
from nexus_gen.scoring.embedding_cache import EmbeddingCache
from nexus_gen.scoring.policy import select
from nexus_gen.scoring.shard_scores import score_shards
from tests.data_fixtures import convert, photo

EN_GEN = "Generate an image according to the following description: "
ZH_GEN = "根据以下描述生成一张图像："


@pytest.fixture(scope="module")
def reference(example_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "shards"
    convert("nexus-gen-jsonl", example_dir / "llm_dataset.jsonl", out, "--images-root", example_dir)
    lines = [json.loads(ln) for ln in (example_dir / "llm_dataset.jsonl").read_text("utf-8").splitlines()]
    return out, {s["id"]: s for s in iter_samples(out)}, lines


def _score(shards, out, *extra):
    return CliRunner().invoke(app, ["score", str(shards), "-o", str(out), "--clip", "tiny",
                                    "--dino", "tiny", *extra])


def test_every_task_of_the_reference_examples_is_handled(reference, tmp_path):
    shards, samples, lines = reference
    out = tmp_path / "scores.parquet"
    r = _score(shards, out, "--clip-zh", "tiny")
    assert r.exit_code == 0, r.output
    assert "in 5 = scored 4 (editing 2, generation 2) + rejected 0 + skipped 1 (understanding 1)" in r.output
    assert "Chinese text of 1 samples scored with Chinese-CLIP chinese-clip-tiny@" in r.output
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    edits = [i for i, s in samples.items() if s["task"] == "editing"]
    for i in edits:  # the reference's edits have no captions: text scores are null, not invented
        assert rows[i]["clip_t"] is None and rows[i]["clip_t_source"] is None and rows[i]["clip_dir"] is None
        assert rows[i]["clip_i"] is not None and rows[i]["l1"] is not None
        assert rows[i]["source_key"] == samples[i]["meta"]["image_xxh3_128"][0]
    # generation prompts, cut from the reference's own lines by hand
    prompts = {d["id"]: d["messages"][0]["content"] for d in lines if d["id"] in ("EliGen_110152", "zh_EliGen_110152")}
    en, zh = prompts["EliGen_110152"][len(EN_GEN):], prompts["zh_EliGen_110152"][len(ZH_GEN):]
    img = samples["EliGen_110152"]["images"][0]["bytes"]
    clip = load_clip("tiny", cache=EmbeddingCache())
    want = float(clip.encode_images([img])[0] @ clip.encode_texts([en])[0])
    assert rows["EliGen_110152"]["clip_t"] == pytest.approx(want, abs=1e-5)
    assert rows["EliGen_110152"]["clipscore"] == pytest.approx(
        2.5 * max(0.0, float(clip.encode_images([img])[0] @ clip.encode_texts(["A photo depicts " + en])[0])), abs=1e-5)
    zclip = load_chinese_clip("tiny", cache=EmbeddingCache())
    zwant = float(zclip.encode_images([img])[0] @ zclip.encode_texts([zh])[0])
    assert rows["zh_EliGen_110152"]["clip_t"] == pytest.approx(zwant, abs=1e-5)
    assert abs(rows["zh_EliGen_110152"]["clip_t"] - float(
        clip.encode_images([img])[0] @ clip.encode_texts([zh])[0])) > 1e-4  # not the English model's
    # selection on the output: generations pass through, the caption rules say they judged nothing
    kept, rep = select(pq.read_table(out), "default")
    assert rep.rows_other_task == 2
    assert {"source_matches_caption", "target_matches_caption", "directional_clip"} <= set(rep.skipped_rules)
    assert "top_4" in rep.skipped_rules  # clip_dir is null for every edit: nothing to rank
    assert set(kept.column("id").to_pylist()) >= {"EliGen_110152", "zh_EliGen_110152"}


def test_without_chinese_clip_chinese_text_is_left_empty_loudly(reference, tmp_path):
    shards, _, _ = reference
    out = tmp_path / "s.parquet"
    r = _score(shards, out, "--clip-zh", "none")
    assert r.exit_code == 0, r.output
    assert ("warning: 1 samples with Chinese text have no text scores (--clip-zh none; English "
            "CLIP cannot read Chinese)") in r.output
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert rows["zh_EliGen_110152"]["clip_t"] is None and rows["EliGen_110152"]["clip_t"] is not None


def test_an_unavailable_chinese_clip_is_refused_before_work(reference, tmp_path):
    shards, _, _ = reference
    out = tmp_path / "s.parquet"
    r = _score(shards, out)  # default --clip-zh paper: not cached, offline
    assert r.exit_code == 2 and not out.exists()
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: --clip-zh: Chinese-CLIP 'paper': OFA-Sys/chinese-clip-vit-base-patch16 is not in the local")
    assert lines[0].endswith("(needed: sample 'zh_EliGen_110152' has Chinese text; --clip-zh none "
                             "leaves it unscored)")


def test_the_shards_fingerprints_are_the_cache_keys(reference, tmp_path, monkeypatch):
    """Shards built by `convert` carry `meta.image_xxh3_128`: scoring reads it, hashes nothing."""
    shards, _, _ = reference

    def no_hashing(_data):
        raise AssertionError("an image was hashed although its shard carries its fingerprint")

    monkeypatch.setattr(images_mod, "content_key", no_hashing)
    clip = load_clip("tiny", cache=EmbeddingCache())
    run = score_shards([shards], tmp_path / "s.parquet", scorer=EditScorer(clip, metrics="clip_t,clip_i,l1"))
    assert run.scored == 4 and run.rejected == 0


def test_chinese_clip_embeddings_are_the_models_own(tmp_path):
    """The encoder's batched path equals ChineseCLIPModel's forward on its processor's output."""
    enc = load_chinese_clip("tiny", cache=EmbeddingCache())
    imgs = [photo("astronaut", 48), photo("coffee", 40)]
    texts = ["一只猫坐在沙发上", "一条街道"]
    inputs = enc.processor(text=texts, images=imgs, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = enc.model(**inputs)
    torch.testing.assert_close(enc.encode_images(imgs), F.normalize(ref.image_embeds, dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.encode_texts(texts), F.normalize(ref.text_embeds, dim=-1), atol=1e-5, rtol=1e-4)
    assert enc.processor.tokenizer.tokenize("一只猫") == ["一", "只", "猫"]  # no [UNK]: the vocab reads Chinese
    assert np.isfinite(enc.encode_texts(["a cat"]).numpy()).all()


def test_the_tiny_chinese_clip_builds_byte_identically_without_downloads(tmp_path, monkeypatch):
    import hashlib

    from nexus_gen.models.tiny import tiny_chinese_clip_dir

    builds = []
    for run in ("a", "b"):
        monkeypatch.setenv("NEXUS_GEN_CACHE", str(tmp_path / run))
        folder = tiny_chinese_clip_dir()
        builds.append({str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
                       for f in sorted(folder.rglob("*")) if f.is_file()})
    assert builds[0] == builds[1]
    assert {"model.safetensors", "vocab.txt", "config.json"} <= set(builds[0])
