"""Scorer inputs against independent references: one transparency rule for PIL and bytes, the
content key is the shards' xxh3-128 (reused, not recomputed, when given), the embedding cache
never mixes models, pixel metrics resize bicubic exactly as PIL does."""
import numpy as np
import pytest
import torch
import xxhash
from PIL import Image

from nexus_gen.scoring import image_inputs as images_mod
from nexus_gen.scoring.clip import load_clip
from nexus_gen.scoring.dino import load_dino
from nexus_gen.scoring.edit_scorer import EditScorer, EditTriplet
from nexus_gen.scoring.embedding_cache import EmbeddingCache
from nexus_gen.scoring.image_inputs import load_rgb, read_input
from nexus_gen.scoring.pixels import pixel_scores
from tests.data_fixtures import encode, photo


def _half_transparent() -> Image.Image:
    """A photo whose left half is fully transparent (its hidden colour is pure blue)."""
    rgba = photo("astronaut", 40).convert("RGBA")
    arr = np.asarray(rgba).copy()
    arr[:, :20] = (0, 0, 255, 0)
    return Image.fromarray(arr, "RGBA")


def test_transparent_pixels_are_white_from_pil_and_from_bytes():
    img = _half_transparent()
    from_pil, from_bytes = np.asarray(load_rgb(img)), np.asarray(load_rgb(encode(img)))
    np.testing.assert_array_equal(from_pil, from_bytes)
    assert (from_pil[:, :20] == 255).all()  # composited onto white, not black, not the hidden blue
    np.testing.assert_array_equal(from_pil[:, 20:], np.asarray(img)[:, 20:, :3])  # opaque: as is
    assert pixel_scores(img, encode(img))["l1"] == 0.0
    enc = load_clip("tiny", cache=EmbeddingCache())
    vecs = enc.encode_images([img, encode(img)])
    torch.testing.assert_close(vecs[0], vecs[1])


def test_content_key_is_the_shards_xxh3_and_a_given_one_is_not_recomputed(monkeypatch):
    data = encode(photo("coffee", 32))
    key, content = read_input(data)
    assert key == xxhash.xxh3_128_hexdigest(data) and content == data
    assert read_input({"bytes": data, "path": None})[0] == key

    def no_hashing(_data):
        raise AssertionError("hashed although the struct carries its key")

    monkeypatch.setattr(images_mod, "content_key", no_hashing)
    assert read_input({"bytes": data, "path": None, "xxh3_128": key}) == (key, data)


def test_a_cache_shared_by_clip_and_dino_keeps_their_embeddings_apart():
    """CLIP and DINO embeddings of the same images, through one cache, equal each model's own."""
    imgs = [encode(photo(n, 48)) for n in ("astronaut", "chelsea")]
    shared = EmbeddingCache()
    clip_s, dino_s = load_clip("tiny", cache=shared), load_dino("tiny", cache=shared)
    clip_ref = load_clip("tiny", cache=EmbeddingCache()).encode_images(imgs)
    dino_ref = load_dino("tiny", cache=EmbeddingCache()).encode_images(imgs)
    for first, second, ref1, ref2 in ((clip_s, dino_s, clip_ref, dino_ref),
                                      (dino_s, clip_s, dino_ref, clip_ref)):
        shared.clear()
        torch.testing.assert_close(first.encode_images(imgs), ref1)
        torch.testing.assert_close(second.encode_images(imgs), ref2)
    # and through the scorer, which runs both over one job
    shared.clear()
    scorer = EditScorer(clip_s, dino_s, metrics="clip_i,dino")
    row = scorer.score_all([EditTriplet("t", imgs[0], imgs[1])])[0]
    assert row["clip_i"] == pytest.approx(float(clip_ref[0] @ clip_ref[1]), abs=1e-5)
    assert row["dino"] == pytest.approx(float(dino_ref[0] @ dino_ref[1]), abs=1e-5)


def test_pixel_metrics_resize_the_edited_image_bicubic_like_pil():
    """Expected values from PIL's own bicubic resize and numpy, on real (non-constant) photos."""
    ref, edited = photo("astronaut", 64), photo("chelsea", 40)  # 64x64 vs 40x26
    assert ref.size != edited.size
    want = np.asarray(edited.resize(ref.size, Image.Resampling.BICUBIC), np.float64) / 255.0
    diff = want - np.asarray(ref, np.float64) / 255.0
    got = pixel_scores(encode(edited), encode(ref))
    assert got["l1"] == pytest.approx(np.abs(diff).mean(), abs=1e-6)
    assert got["l2"] == pytest.approx((diff ** 2).mean(), abs=1e-6)
    row = EditScorer(None, None, metrics="l1").score_all([EditTriplet("t", encode(ref), encode(edited))])[0]
    assert row["l1"] == pytest.approx(np.abs(diff).mean(), abs=1e-6)
