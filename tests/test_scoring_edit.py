"""EditScorer: columns equal the metric formulas on independently computed embeddings, both
directions share encodings, bad images give error rows, missing captions give None."""
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageDraw

from nexus_gen.scoring import metrics as M
from nexus_gen.scoring.clip import load_clip
from nexus_gen.scoring.dino import load_dino
from nexus_gen.scoring.edit_scorer import EditScorer, EditTriplet, parse_metrics
from nexus_gen.scoring.embedding_cache import EmbeddingCache
from nexus_gen.scoring.pixels import pixel_scores

ALL = "clip_t,clipscore,clip_i,clip_dir,dino,l1,l2,l1_masked"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Real photos with a painted square as the edit, and the square's mask."""
    d = tmp_path_factory.mktemp("pairs")
    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        src = Image.fromarray(getattr(skimage.data, name)())
        tgt = src.copy()
        W, H = src.size
        ImageDraw.Draw(tgt).rectangle((W // 4, H // 4, W // 2, H // 2), fill=(200, 20, 20))
        mask = np.zeros((H, W), bool)
        mask[H // 4:H // 2 + 1, W // 4:W // 2 + 1] = True
        sp, tp = d / f"{name}_src.png", d / f"{name}_tgt.jpg"
        src.save(sp)
        tgt.save(tp, quality=95)
        out.append((name, sp, tp, mask))
    return out


@pytest.fixture(scope="module")
def encoders():
    return load_clip("tiny", cache=EmbeddingCache()), load_dino("tiny", cache=EmbeddingCache())


def _triplets(pairs):
    ts = []
    for name, sp, tp, mask in pairs:
        ts.append(EditTriplet(name, str(sp), str(tp), "add a red square", f"a photo of {name}",
                              f"a photo of {name} with a red square", mask=mask))
        ts.append(EditTriplet(name + "_rev", str(tp), str(sp), "remove the red square",
                              f"a photo of {name} with a red square", f"a photo of {name}"))
    return ts


def test_columns_equal_the_formulas_on_separately_computed_embeddings(pairs, encoders):
    clip, dino = encoders
    rows = EditScorer(clip, dino, metrics=ALL, batch_size=2).score_all(_triplets(pairs))
    for (name, sp, tp, mask), row in zip(pairs, rows[0::2]):
        assert row["id"] == name and row["error"] is None
        si, ti = clip.encode_images([sp]), clip.encode_images([tp])
        sc, tc, tcp = clip.encode_texts([f"a photo of {name}", f"a photo of {name} with a red square",
                                         "A photo depicts " + f"a photo of {name} with a red square"])
        assert row["clip_t"] == pytest.approx(M.clip_t(ti[0], tc), abs=1e-6)
        assert row["clip_t_source"] == pytest.approx(M.clip_t(si[0], sc), abs=1e-6)
        assert row["clipscore"] == pytest.approx(M.clipscore(ti[0], tcp), abs=1e-6)
        assert row["clip_i"] == pytest.approx(M.clip_i(si[0], ti[0]), abs=1e-6)
        assert row["clip_dir"] == pytest.approx(M.clip_dir(si[0], ti[0], sc, tc), abs=1e-6)
        d = dino.encode_images([sp, tp])
        assert row["dino"] == pytest.approx(M.dino(d[0], d[1]), abs=1e-6)
        px = pixel_scores(tp, sp, mask=mask)
        for k in ("l1", "l2", "l1_inside", "l1_outside"):
            assert row[k] == pytest.approx(px[k], abs=1e-9)
        assert row["l1_inside"] > 10 * row["l1_outside"]  # the edit is inside the mask


def test_both_directions_share_encodings_and_mirror_each_other(pairs):
    clip = load_clip("tiny", cache=EmbeddingCache())
    scorer = EditScorer(clip, metrics="clip_t,clip_i,clip_dir")
    rows = scorer.score_all(_triplets(pairs))
    assert clip.images_forwarded == 2 * len(pairs)  # one forward per distinct image
    assert clip.texts_forwarded == 2 * len(pairs)
    for fwd, rev in zip(rows[0::2], rows[1::2]):
        assert rev["clip_i"] == pytest.approx(fwd["clip_i"])
        assert rev["clip_dir"] == pytest.approx(fwd["clip_dir"])
        assert rev["clip_t"] == pytest.approx(fwd["clip_t_source"])
    scorer.score_all(_triplets(pairs))  # all cached now
    assert clip.images_forwarded == 2 * len(pairs) and clip.texts_forwarded == 2 * len(pairs)


def test_a_bad_image_is_an_error_row_and_the_rest_is_scored(pairs, encoders, tmp_path):
    clip, dino = encoders
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    name, sp, tp, _ = pairs[0]
    ts = [EditTriplet("ok", str(sp), str(tp), "", "a", "b"),
          EditTriplet("broken", str(sp), str(bad), "", "a", "b"),
          EditTriplet("ok2", str(tp), str(sp), "", "b", "a")]
    rows = EditScorer(clip, dino, metrics="clip_t,clip_dir,dino,l1").score_all(ts, chunk_size=2)
    assert [r["id"] for r in rows] == ["ok", "broken", "ok2"]
    assert rows[1]["error"].startswith("target:") and "bad.png" in rows[1]["error"]
    assert all(rows[1][c] is None for c in ("clip_t", "clip_dir", "dino", "l1"))
    assert rows[0]["error"] is None and rows[2]["error"] is None
    assert rows[2]["clip_dir"] == pytest.approx(rows[0]["clip_dir"])


def test_missing_captions_or_mask_give_none_not_errors(pairs, encoders):
    clip, dino = encoders
    _, sp, tp, _ = pairs[1]
    row = EditScorer(clip, metrics="clip_t,clip_i,clip_dir,l1_masked").score_all(
        [EditTriplet("x", str(sp), str(tp), "edit", None, "a red square")])[0]
    assert row["error"] is None and row["clip_i"] is not None and row["clip_t"] is not None
    assert row["clip_t_source"] is None and row["clip_dir"] is None
    assert row["l1_inside"] is None and row["l1_outside"] is None


def test_bad_configuration_fails_before_any_work(encoders):
    clip, _ = encoders
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metrics("clip_t,fid")
    with pytest.raises(ValueError, match="DINO encoder"):
        EditScorer(clip, None, metrics="dino")
    with pytest.raises(ValueError, match="CLIP encoder"):
        EditScorer(None, None, metrics="clip_i")
