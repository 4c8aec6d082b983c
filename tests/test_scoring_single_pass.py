"""One scoring run reads, hashes and decodes each distinct image once for CLIP, DINO and the pixel
metrics together, with the same numbers as each public per-encoder API on its own, per-item errors
for bad images, bounded memory for decoded images, and a working embedding cache."""
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
import torch
from PIL import Image, ImageDraw

import nexus_gen.scoring.edit_scorer as edit_scorer
import nexus_gen.scoring.image_inputs as image_inputs
import nexus_gen.scoring.pixels as pixels
from nexus_gen.data.shards import ShardWriter
from nexus_gen.scoring import metrics as M
from nexus_gen.scoring.clip import load_clip
from nexus_gen.scoring.dino import load_dino
from nexus_gen.scoring.edit_scorer import EditScorer, EditTriplet
from nexus_gen.scoring.embedding_cache import EmbeddingCache
from nexus_gen.scoring.image_encoder import ImageJob
from nexus_gen.scoring.image_inputs import ImageLoadError
from nexus_gen.scoring.pixels import PixelPairs, pixel_scores
from nexus_gen.scoring.shard_scores import score_shards

NAMES = ("astronaut", "coffee", "chelsea", "rocket")
FOUR = "clip_t,clip_i,dino,l1"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(name, source path, target path, mask) per photo: a painted square is the edit."""
    d = tmp_path_factory.mktemp("single_pass")
    out = []
    for i, name in enumerate(NAMES):
        src = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        src = src.resize((160 + 16 * i, 120 + 8 * i))
        tgt = src.copy()
        W, H = src.size
        ImageDraw.Draw(tgt).rectangle((W // 4, H // 4, W // 2, H // 2), fill=(200, 20, 20))
        if i % 2:  # targets of another size: the pixel metrics resize them to the source
            tgt = tgt.resize((W + 24, H + 10))
        mask = np.zeros((H, W), bool)
        mask[H // 4:H // 2 + 1, W // 4:W // 2 + 1] = True
        sp, tp = d / f"{name}_src.png", d / f"{name}_tgt.{'jpg' if i % 2 else 'png'}"
        src.save(sp)
        tgt.save(tp, quality=95) if i % 2 else tgt.save(tp)
        out.append((name, sp, tp, mask))
    return out


def _both_ways(photos, masks: bool = False) -> list[EditTriplet]:
    ts = []
    for name, sp, tp, mask in photos:
        cap_s, cap_t = f"a photo of {name}", f"a photo of {name} with a red square"
        ts.append(EditTriplet(name, str(sp), str(tp), "add a red square", cap_s, cap_t,
                              mask=mask if masks else None))
        ts.append(EditTriplet(name + "_rev", str(tp), str(sp), "remove the red square", cap_t, cap_s,
                              mask=mask if masks else None))
    return ts


def _encoders():
    return load_clip("tiny", cache=EmbeddingCache()), load_dino("tiny", cache=EmbeddingCache())


class IOCounter:
    """Counts file reads (`Path.read_bytes`, what `read_input` uses) per path and decodes
    (`decode_image`, the one decoder the scoring package calls) per encoded content."""

    def __init__(self, monkeypatch):
        self.reads: Counter = Counter()
        self.decodes: Counter = Counter()
        read_bytes, decode = Path.read_bytes, image_inputs.decode_image

        def counting_read(path):
            self.reads[str(path)] += 1
            return read_bytes(path)

        def counting_decode(data, name="<bytes>", *args, **kwargs):
            self.decodes[bytes(data)] += 1
            return decode(data, name, *args, **kwargs)

        monkeypatch.setattr(Path, "read_bytes", counting_read)
        monkeypatch.setattr(image_inputs, "decode_image", counting_decode)


def _expected(clip, dino, ts: list[EditTriplet], which=("l1",)) -> list[dict]:
    """The columns through each public API on its own (fresh caches: nothing shared)."""
    rows = []
    for t in ts:
        si, ti = clip.encode_images([t.source]), clip.encode_images([t.target])
        sc, tc, sp, tp = clip.encode_texts([t.source_caption, t.target_caption,
                                            M.CLIPSCORE_PREFIX + t.source_caption,
                                            M.CLIPSCORE_PREFIX + t.target_caption])
        d = dino.encode_images([t.source, t.target])
        row = {"clip_t": M.clip_t(ti[0], tc), "clip_t_source": M.clip_t(si[0], sc),
               "clip_i": M.clip_i(si[0], ti[0]), "clip_dir": M.clip_dir(si[0], ti[0], sc, tc),
               "clipscore": M.clipscore(ti[0], tp), "clipscore_source": M.clipscore(si[0], sp),
               "dino": M.dino(d[0], d[1])}
        row.update(pixel_scores(t.target, t.source, mask=t.mask, which=which))
        rows.append(row)
    return rows


def _assert_rows_equal(rows, want, columns):
    for row, exp in zip(rows, want, strict=True):
        assert row["error"] is None, row
        for c in columns:
            assert row[c] == pytest.approx(float(exp[c]), abs=1e-6), (row["id"], c)


def test_clip_dino_and_pixels_read_and_decode_each_distinct_image_once(photos, monkeypatch):
    clip, dino = _encoders()
    ts = _both_ways(photos)
    io_count = IOCounter(monkeypatch)
    rows = EditScorer(clip, dino, metrics=FOUR, batch_size=3, workers=2).score_all(ts)
    assert all(r["error"] is None for r in rows)
    paths = {str(p) for _, sp, tp, _ in photos for p in (sp, tp)}
    assert set(io_count.reads) == paths and set(io_count.reads.values()) == {1}
    contents = {Path(p).read_bytes() for p in paths}
    assert set(io_count.decodes) == contents and set(io_count.decodes.values()) == {1}
    assert clip.images_forwarded == dino.images_forwarded == len(paths)


def test_shared_run_gives_the_numbers_of_each_api_on_its_own(photos):
    clip, dino = _encoders()
    ts = _both_ways(photos, masks=True)
    rows = EditScorer(clip, dino, metrics="clip_t,clipscore,clip_i,clip_dir,dino,l1,l2,l1_masked",
                      batch_size=2).score_all(ts, chunk_size=3)  # chunks split the directions
    want = _expected(*_encoders(), ts, which=("l1", "l2"))
    _assert_rows_equal(rows, want, ["clip_t", "clip_t_source", "clip_i", "clip_dir", "clipscore",
                                    "clipscore_source", "dino", "l1", "l2", "l1_inside", "l1_outside"])


def test_a_cache_hit_for_one_encoder_still_decodes_once_for_the_other_and_pixels(photos, monkeypatch):
    clip, dino = _encoders()
    ts = _both_ways(photos[:2])
    clip.encode_images([t.source for t in ts])  # every image is already in CLIP's cache
    before = clip.images_forwarded
    io_count = IOCounter(monkeypatch)
    rows = EditScorer(clip, dino, metrics="clip_i,dino,l2").score_all(ts)
    assert clip.images_forwarded == before and dino.images_forwarded == 4
    assert set(io_count.decodes.values()) == {1} and len(io_count.decodes) == 4
    _assert_rows_equal(rows, _expected(*_encoders(), ts, which=("l2",)), ["clip_i", "dino", "l2"])


def test_bad_images_are_per_item_errors_with_the_same_reasons(photos, tmp_path):
    clip, dino = _encoders()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    missing = tmp_path / "missing.png"
    _, sp, tp, _ = photos[0]
    ts = [EditTriplet("ok", str(sp), str(tp), "", "a", "b"),
          EditTriplet("bad-target", str(sp), str(bad), "", "a", "b"),
          EditTriplet("missing-source", str(missing), str(tp), "", "a", "b"),
          EditTriplet("both", str(bad), str(missing), "", "a", "b"),
          EditTriplet("ok-rev", str(tp), str(sp), "", "b", "a")]
    rows = EditScorer(clip, dino, metrics=FOUR).score_all(ts)
    assert [r["error"] is None for r in rows] == [True, False, False, False, True]
    why = dict(zip(("bad", "missing"), _encoders()[0].embed_images([str(bad), str(missing)]).errors))
    assert "bad.png" in why["bad"] and "missing.png" in why["missing"]
    assert rows[1]["error"] == f"target: {why['bad']}"
    assert rows[2]["error"] == f"source: {why['missing']}"
    assert rows[3]["error"] == f"source: {why['bad']}; target: {why['missing']}"
    assert all(r[c] is None for r in rows[1:4] for c in ("clip_t", "clip_i", "dino", "l1"))
    _assert_rows_equal([rows[0], rows[4]], _expected(*_encoders(), [ts[0], ts[4]]), ["clip_i", "l1"])
    # pixel metrics alone: the reason pixel_scores gives for the first bad image of the pair
    pix = EditScorer(metrics="l1,l2").score_all(ts)
    for t, row in zip(ts[1:4], pix[1:4]):
        with pytest.raises(ImageLoadError) as exc:
            pixel_scores(t.target, t.source)
        assert row["error"] == f"pixels: {exc.value}"
    assert pix[0]["l1"] == pytest.approx(pixel_scores(str(tp), str(sp))["l1"], abs=1e-9)


def test_pixel_metrics_alone_decode_each_image_once(photos, monkeypatch):
    ts = _both_ways(photos, masks=True)
    io_count = IOCounter(monkeypatch)
    rows = EditScorer(metrics="l1,l2,l1_masked").score_all(ts)
    assert len(io_count.decodes) == 2 * len(photos) and set(io_count.decodes.values()) == {1}
    for t, row in zip(ts, rows):
        want = pixel_scores(t.target, t.source, mask=t.mask)
        assert all(row[k] == pytest.approx(want[k], abs=1e-9) for k in want)


def test_held_images_stay_under_the_budget_whatever_the_order(photos, tmp_path, monkeypatch):
    """Sources reused far apart (all edits of one kind, then all of another) would keep every
    source decoded until its second pair; past the budget an image is decoded again instead."""
    made: list[PixelPairs] = []

    class Spy(PixelPairs):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(edit_scorer, "PixelPairs", Spy)
    monkeypatch.setattr(pixels, "MAX_HELD_IMAGES", 1)
    first, second = [], []
    for i, (_, sp, tp, _) in enumerate(photos):
        flipped = tmp_path / f"flipped{i}.png"
        Image.open(tp).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
        first.append(EditTriplet(f"a{i}", str(sp), str(tp)))
        second.append(EditTriplet(f"b{i}", str(sp), str(flipped)))
    ts = first + second
    io_count = IOCounter(monkeypatch)
    rows = EditScorer(metrics="l1").score_all(ts)
    assert len(made) == 1 and made[0].peak_held <= 1 and made[0].held == 0
    assert sum(io_count.decodes.values()) > 3 * len(photos)  # the budget cost re-decodes
    for t, row in zip(ts, rows):
        assert row["l1"] == pytest.approx(pixel_scores(t.target, t.source)["l1"], abs=1e-9)
    # with room for them, the same order decodes each image once and ends holding nothing
    monkeypatch.setattr(pixels, "MAX_HELD_IMAGES", 64)
    io_count.decodes.clear()
    assert EditScorer(metrics="l1").score_all(ts) == rows
    assert set(io_count.decodes.values()) == {1} and len(io_count.decodes) == 3 * len(photos)
    assert made[1].peak_held >= len(photos) and made[1].held == 0  # it kept them instead


@pytest.mark.parametrize("overlap", [True, False])
def test_one_job_feeds_two_encoders_and_pixels_in_both_schedules(photos, overlap):
    clip, dino = _encoders()
    items = [str(p) for _, sp, tp, _ in photos for p in (sp, tp)] + [b"junk"]
    sink = PixelPairs(items, edited=list(range(1, 8, 2)), reference=list(range(0, 8, 2)))
    job = ImageJob([clip, dino], items, batch_size=2, workers=2, prefetch=3, overlap=overlap, sink=sink)
    got_clip, got_dino = job.results()
    ref_clip, ref_dino = _encoders()
    want_clip = ref_clip.embed_images(items)
    torch.testing.assert_close(got_clip.vectors, want_clip.vectors, equal_nan=True, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_dino.vectors, ref_dino.embed_images(items).vectors, equal_nan=True,
                               atol=1e-6, rtol=1e-5)
    assert got_clip.errors == want_clip.errors and got_clip.errors[-1] is not None
    for (_, sp, tp, _), got in zip(photos, sink.results()):
        assert got == pytest.approx(pixel_scores(tp, sp), abs=1e-9)
    with pytest.raises(ValueError, match="one-encoder"):
        job.result()


def _png(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


def test_score_shards_decodes_each_stored_image_once(photos, tmp_path, monkeypatch):
    samples = []
    for i, (name, sp, tp, _) in enumerate(photos):
        src, tgt = sp.read_bytes(), _png(Image.open(tp).convert("RGB"))
        for j, (a, b) in enumerate(((src, tgt), (tgt, src))):  # both directions, adjacent rows
            samples.append({"id": f"e{i}-{j}", "source": "test", "task": "editing", "language": "en",
                            "messages": [{"role": "user", "content": "<image> edit"},
                                         {"role": "assistant", "content": "Here is the image: <image>"}],
                            "images": [{"bytes": a, "path": None}, {"bytes": b, "path": None}],
                            "meta": {"captions": [f"{name} {j}", f"{name} {1 - j}"]}})
    samples.append(dict(samples[0], id="broken", images=[samples[0]["images"][0],
                                                         {"bytes": b"\x89PNG\r\n\x1a\nx", "path": None}]))
    with ShardWriter(tmp_path / "shards", row_group_bytes=20_000) as w:
        for s in samples:
            w.write(s)
    clip, dino = _encoders()
    io_count = IOCounter(monkeypatch)
    run = score_shards([tmp_path / "shards"], tmp_path / "s.parquet",
                       scorer=EditScorer(clip, dino, metrics=FOUR, batch_size=2))
    assert (run.rows_in, run.scored, run.rejected) == (len(samples), len(samples) - 1, 1)
    assert set(io_count.decodes.values()) == {1}
    assert len(io_count.decodes) == 2 * len(photos) + 1  # + the broken image, tried once
    table = pq.read_table(tmp_path / "s.parquet").to_pylist()
    clip2, dino2 = _encoders()
    for row, s in zip(table, samples):
        a, b = (im["bytes"] for im in s["images"])
        si, ti = clip2.encode_images([a, b])
        d = dino2.encode_images([a, b])
        assert row["id"] == s["id"]
        assert row["clip_i"] == pytest.approx(float(M.clip_i(si, ti)), abs=1e-6)
        assert row["dino"] == pytest.approx(float(M.dino(d[0], d[1])), abs=1e-6)
        assert row["l1"] == pytest.approx(pixel_scores(b, a)["l1"], abs=1e-9)
    rejects = (tmp_path / "s.rejects.jsonl").read_text()
    assert '"broken"' in rejects and "target:" in rejects
