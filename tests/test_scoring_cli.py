"""`nexus-gen score` over real shards: one row per scored editing sample joined by id, the values
the library computes, bad samples in the rejects file, counts that reconcile."""
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
import xxhash
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from flows.cli import app
from nexus_gen.data.shards import ShardWriter
from nexus_gen.scoring.clip import load_clip
from nexus_gen.scoring.dino import load_dino
from nexus_gen.scoring.edit_scorer import EditScorer
from nexus_gen.scoring.embedding_cache import EmbeddingCache
from nexus_gen.scoring.shard_scores import read_scores_metadata, triplet_from_sample


def _png(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


def _edit_sample(i: int, src: Image.Image, tgt_bytes: bytes, captions) -> dict:
    return {"id": f"edit-{i}", "source": "test", "task": "editing", "language": "en",
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "<image> add a red square"},
                         {"role": "assistant", "content": "Here is the image: <image>"}],
            "images": [{"bytes": _png(src), "path": None}, {"bytes": tgt_bytes, "path": None}],
            "meta": {"captions": captions, "edit_type": "add", "direction": "forward"}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "edit"
    samples = []
    for i, name in enumerate(["astronaut", "coffee", "chelsea"]):
        src = Image.fromarray(getattr(skimage.data, name)()).resize((160, 120))
        tgt = src.copy()
        ImageDraw.Draw(tgt).rectangle((40, 30, 80, 60), fill=(220, 10, 10))
        samples.append(_edit_sample(i, src, _png(tgt), [f"a photo of {name}",
                                                        f"a photo of {name} with a red square"]))
    samples.append(_edit_sample(3, src, b"\x89PNG\r\n\x1a\nbroken", ["a", "b"]))  # corrupt target
    one = dict(samples[0], id="one-image", images=samples[0]["images"][:1])  # a target is missing
    samples.append(one)
    samples.append({"id": "gen-0", "source": "test", "task": "generation", "language": "en",
                    "messages": [{"role": "user", "content": "Generate an image according to the "
                                  "following description: a cat"},
                                 {"role": "assistant", "content": "Here is an image based on the "
                                  "description: <image>"}],
                    "images": [{"bytes": _png(src), "path": None}], "meta": {}})
    with ShardWriter(out, row_group_bytes=20_000) as w:
        for s in samples:
            w.write(s)
    return out, samples


def test_score_command_writes_scores_by_id_and_rejects(shards, tmp_path):
    out_dir, samples = shards
    out = tmp_path / "scores.parquet"
    r = CliRunner().invoke(app, ["score", str(out_dir), "--metrics", "clip_t,clip_i,clip_dir,dino,l1",
                                 "--out", str(out), "--clip", "tiny", "--dino", "tiny",
                                 "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert "in 6 = scored 4 (editing 3, generation 1) + rejected 2 + skipped 0 (none)" in r.output
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["edit-0", "edit-1", "edit-2", "gen-0"]
    assert table.column("task").to_pylist() == ["editing"] * 3 + ["generation"]
    assert table.column("edit_type").to_pylist() == ["add"] * 3 + [None]
    # no meta.source_key nor fingerprints in these shards: the xxh3-128 of the source image bytes
    assert table.column("source_key").to_pylist() == [
        xxhash.xxh3_128_hexdigest(s["images"][0]["bytes"]) for s in samples[:3] + samples[5:]]
    meta = read_scores_metadata(out)
    assert meta["metrics"] == ["clip_t", "clip_i", "clip_dir", "dino", "l1"]
    assert meta["models"]["clip"].startswith("clip-tiny@") and meta["models"]["dino"].startswith("dino-tiny@")
    # the same numbers as the library on the same samples
    scorer = EditScorer(load_clip("tiny", cache=EmbeddingCache()), load_dino("tiny", cache=EmbeddingCache()),
                        metrics="clip_t,clip_i,clip_dir,dino,l1")
    want = scorer.score_all([triplet_from_sample(s) for s in samples[:3]])
    for c in ("clip_t", "clip_t_source", "clip_i", "clip_dir", "dino", "l1"):
        np.testing.assert_allclose(table.column(c).to_pylist()[:3], [w[c] for w in want], atol=1e-6)
    # the generation sample: its image against the prompt the template wraps ("a cat")
    clip = load_clip("tiny", cache=EmbeddingCache())
    img, txt = clip.encode_images([samples[5]["images"][0]["bytes"]]), clip.encode_texts(["a cat"])
    assert table.column("clip_t").to_pylist()[3] == pytest.approx(float(img[0] @ txt[0]), abs=1e-5)
    assert table.column("dino").to_pylist()[3] is None
    rejects = [json.loads(l) for l in (tmp_path / "scores.rejects.jsonl").read_text().splitlines()]
    assert {x["id"] for x in rejects} == {"edit-3", "one-image"}
    reasons = {x["id"]: x["reason"] for x in rejects}
    assert reasons["edit-3"].startswith("target:") and "needs 2 images" in reasons["one-image"]


def test_instruction_and_captions_come_from_the_sample(shards):
    t = triplet_from_sample(shards[1][0])
    assert t.instruction == "add a red square"
    assert (t.source_caption, t.target_caption) == ("a photo of astronaut",
                                                    "a photo of astronaut with a red square")
    no_caps = dict(shards[1][0], meta={"captions": [None, "x"]})
    t2 = triplet_from_sample(no_caps)
    assert t2.source_caption is None and t2.target_caption == "x"


@pytest.mark.parametrize("args, msg", [
    (["--metrics", "clip_t,fid"], "unknown metric"),
    (["--metrics", "l1_masked"], "masks"),
])
def test_bad_options_fail_before_work(shards, tmp_path, args, msg):
    out = tmp_path / "s.parquet"
    r = CliRunner().invoke(app, ["score", str(shards[0]), "--out", str(out), "--clip", "tiny",
                                 "--dino", "tiny", *args])
    assert r.exit_code != 0 and msg in r.output
    assert not out.exists()


def test_missing_shards_fail_clearly(tmp_path):
    r = CliRunner().invoke(app, ["score", str(tmp_path / "nope"), "--out", str(tmp_path / "s.parquet"),
                                 "--clip", "tiny", "--metrics", "clip_i"])
    assert r.exit_code != 0 and "no shards" in r.output


def _no_work(monkeypatch):
    """Make any model load or scoring fail the test: errors must come before work."""
    import nexus_gen.scoring.clip as clip_mod
    import nexus_gen.scoring.shard_scores as ss

    def boom(*a, **k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(clip_mod, "load_clip", boom)
    monkeypatch.setattr(ss, "score_shards", boom)


def test_out_an_existing_folder_fails_before_any_work(shards, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    r = CliRunner().invoke(app, ["score", str(shards[0]), "-o", str(tmp_path), "--clip", "tiny",
                                 "--dino", "tiny"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"error: --out: scores file {tmp_path} is an existing folder; give a file path, "
        f"e.g. {tmp_path / 'scores.parquet'}"]
    assert not [p for p in tmp_path.iterdir()]  # no .tmp files


@pytest.mark.parametrize("device, says", [
    ("gpu", "error: --device: unknown device 'gpu': use cpu, cuda or cuda:N"),
    ("cuda", "error: --device: device 'cuda': this machine has no usable CUDA GPU"),
])
def test_a_device_this_machine_lacks_is_one_line(shards, tmp_path, monkeypatch, device, says):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this GPU-less machine
    _no_work(monkeypatch)
    r = CliRunner().invoke(app, ["score", str(shards[0]), "-o", str(tmp_path / "s.parquet"),
                                 "--device", device, "--clip", "tiny", "--dino", "tiny"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), r.output


def test_default_models_offline_are_one_line_naming_the_option_and_the_fix(shards, tmp_path):
    out = tmp_path / "s.parquet"
    r = CliRunner().invoke(app, ["score", str(shards[0]), "-o", str(out)])  # small CLIP, paper DINO
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output
    assert lines[0].startswith("error: --clip: CLIP 'small': timm/vit_base_patch32_clip_224.openai "
                               "is not in the local Hugging Face cache and the hub is offline")
    assert "'tiny'" in lines[0] and not out.exists()
    r = CliRunner().invoke(app, ["score", str(shards[0]), "-o", str(out), "--metrics", "dino"])
    assert r.exit_code == 2 and r.output.startswith("error: --dino: DINO 'paper': facebook/dino-vits16")


def test_rows_carry_the_group_keys_policies_need(tmp_path):
    """source_key: meta.source_key, else the build's fingerprint, else the source bytes' xxh3;
    prompt_id from meta; Chinese captions are scored with Chinese-CLIP, image metrics are not."""
    from nexus_gen.scoring.chinese_clip import load_chinese_clip
    from nexus_gen.scoring.shard_scores import score_shards

    src = Image.fromarray(skimage.data.astronaut()).resize((64, 64))
    tgt = src.copy()
    ImageDraw.Draw(tgt).rectangle((10, 10, 30, 30), fill=(0, 200, 0))
    s0 = _edit_sample(0, src, _png(tgt), ["a woman", "a woman with a green square"])
    s0["meta"].update(source_key="scene-7", prompt_id="p-1")
    s1 = _edit_sample(1, src, _png(tgt), ["一位女士", "一位女士和一个绿色方块"])
    s1["meta"]["image_xxh3_128"] = ["f" * 32, "e" * 32]
    s2 = _edit_sample(2, src, _png(tgt), None)
    with ShardWriter(tmp_path / "in") as w:
        for s in (s0, s1, s2):
            w.write(s)
    clip, zh = load_clip("tiny", cache=EmbeddingCache()), load_chinese_clip("tiny", cache=EmbeddingCache())
    run = score_shards([tmp_path / "in"], tmp_path / "s.parquet", chinese_clip=zh,
                       scorer=EditScorer(clip, metrics="clip_t,clip_i,clip_dir"))
    assert run.scored == 3 and run.chinese == 1
    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert [r["source_key"] for r in rows] == ["scene-7", "f" * 32, xxhash.xxh3_128_hexdigest(_png(src))]
    assert [r["prompt_id"] for r in rows] == ["p-1", None, None]
    z_img = zh.encode_images([_png(src), _png(tgt)])
    z_txt = zh.encode_texts(["一位女士", "一位女士和一个绿色方块"])
    assert rows[1]["clip_t_source"] == pytest.approx(float(z_img[0] @ z_txt[0]), abs=1e-5)
    assert rows[1]["clip_t"] == pytest.approx(float(z_img[1] @ z_txt[1]), abs=1e-5)
    e_img = clip.encode_images([_png(src), _png(tgt)])
    assert rows[1]["clip_i"] == pytest.approx(float(e_img[0] @ e_img[1]), abs=1e-5)  # English CLIP
    assert rows[0]["clip_t"] == pytest.approx(float(e_img[1] @ clip.encode_texts(
        ["a woman with a green square"])[0]), abs=1e-5)
