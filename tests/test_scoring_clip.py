"""CLIP and DINO encoders: offline tiny profiles, spec resolution (QuickGELU for OpenAI weights),
preprocessing identical to open_clip's own transform, the embedding cache, per-item errors."""
import io
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from nexus_gen.scoring.clip import ModelUnavailableError, load_clip, resolve_clip_spec
from nexus_gen.scoring.dino import dino_transform, load_dino
from nexus_gen.scoring.embedding_cache import EmbeddingCache
from nexus_gen.scoring.image_inputs import ImageLoadError
from nexus_gen.scoring.zeroshot import zeroshot_classifier, zeroshot_logits


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos on disk, mixed sizes and formats."""
    d = tmp_path_factory.mktemp("photos")
    out = []
    for i, (name, ext) in enumerate([("astronaut", "png"), ("coffee", "jpg"), ("chelsea", "png"),
                                     ("rocket", "jpg")]):
        p = d / f"{name}.{ext}"
        Image.fromarray(getattr(skimage.data, name)()).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def enc():
    return load_clip("tiny", cache=EmbeddingCache())


class ForwardCounter:
    """Counts real forward calls of a module through a forward hook."""

    def __init__(self, module):
        self.calls = 0
        self.images = 0
        self._h = module.register_forward_hook(self._hook)

    def _hook(self, mod, args, out):
        self.calls += 1
        self.images += int(args[0].shape[0])

    def remove(self):
        self._h.remove()


def _reference_embedding(enc, path):
    """open_clip's own eval transform + encode_image, outside our pipeline."""
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(**get_model_preprocess_cfg(enc.model))
    tf = image_transform_v2(cfg, is_train=False)
    x = tf(Image.open(path).convert("RGB"))[None]
    with torch.no_grad():
        return F.normalize(enc.model.encode_image(x), dim=-1)[0], x[0]


def test_tiny_profile_loads_offline_with_a_stable_id(enc):
    assert enc.model_id.startswith("clip-tiny@sha256:")
    assert load_clip("tiny", cache=EmbeddingCache()).model_id == enc.model_id
    tiny_dir = Path(resolve_clip_spec("tiny").model_name[len("local-dir:"):])
    cfg = json.loads((tiny_dir / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["quick_gelu"] is True


def test_preprocessing_is_open_clips_own_transform(enc, photos):
    for p in photos:
        _, want = _reference_embedding(enc, p)
        got = enc.preprocess(Image.open(p).convert("RGB"))
        assert torch.equal(got, want)


def test_batched_embeddings_equal_open_clip_for_paths_bytes_and_pil(enc, photos):
    items = [str(photos[0]), photos[1].read_bytes(), Image.open(photos[2]).convert("RGB"), photos[3]]
    got = enc.encode_images(items, batch_size=3)
    assert got.shape == (4, enc.embed_dim) and got.dtype == torch.float32
    for i, p in enumerate(photos):
        want, _ = _reference_embedding(enc, p)
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(4))


def test_a_cache_hit_runs_no_forward_pass(photos):
    enc = load_clip("tiny", cache=EmbeddingCache())
    counter = ForwardCounter(enc.model.visual)
    try:
        first = enc.encode_images([photos[0], photos[1]])
        assert counter.images == 2
        # the same content again, as bytes and as a path, plus a duplicate within the call
        again = enc.encode_images([photos[1].read_bytes(), str(photos[0]), photos[0]])
        assert counter.images == 2 and counter.calls == 1
        torch.testing.assert_close(again[0], first[1])
        torch.testing.assert_close(again[2], first[0])
        enc.encode_images([photos[2], photos[2].read_bytes()])  # new image, twice: one forward
        assert counter.images == 3
        assert enc.cache.hits >= 2
    finally:
        counter.remove()


def test_texts_are_cached_and_the_trimmed_forward_equals_open_clip(enc):
    texts = ["a photo of a cat", "an astronaut in a white suit standing in front of a flag",
             "a photo of a cat", "x"]
    got = enc.encode_texts(texts)
    with torch.no_grad():
        want = F.normalize(enc.model.encode_text(enc.tokenizer(texts)), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    before = enc.texts_forwarded
    enc.encode_texts(["x", "a photo of a cat"])
    assert enc.texts_forwarded == before
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode_texts("a photo")


def test_both_text_encoders_cache_a_text_by_its_xxh3_128():
    """CLIP and Chinese-CLIP key a text as `text:` + xxh3-128 of its UTF-8 bytes (the project's
    fingerprint, as for images) and forward each distinct text once."""
    import xxhash

    from nexus_gen.scoring.chinese_clip import load_chinese_clip

    texts = ["a photo of a cat", "一只猫", "a photo of a cat"]
    for load in (load_clip, load_chinese_clip):
        cache = EmbeddingCache()
        enc = load("tiny", cache=cache)
        got = enc.encode_texts(texts)
        assert enc.texts_forwarded == 2
        for t, row in zip(texts, got):
            cached = cache.get(enc.cache_key, "text:" + xxhash.xxh3_128_hexdigest(t.encode("utf-8")))
            assert cached is not None, f"{load.__name__}: {t!r} not cached under its xxh3-128 key"
            torch.testing.assert_close(cached, row)


def test_bad_images_get_a_per_item_error_not_a_crashed_batch(enc, photos, tmp_path):
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(photos[0].read_bytes()[:200])
    items = [photos[0], b"not an image", tmp_path / "missing.png", trunc, photos[1]]
    res = enc.embed_images(items, batch_size=2)
    assert [e is None for e in res.errors] == [True, False, False, False, True]
    assert "missing.png" in res.errors[2] and "truncated.png" not in (res.errors[1] or "")
    assert "truncated.png" in res.errors[3]
    assert torch.isfinite(res.vectors[[0, 4]]).all() and torch.isnan(res.vectors[1:4]).all()
    with pytest.raises(ImageLoadError, match=r"3 of 5 images failed: item 1"):
        enc.encode_images(items)


def test_profiles_resolve_to_quickgelu_openai_weights():
    for spec, name in [("paper", "ViT-L-14-quickgelu"), ("small", "ViT-B-32-quickgelu"),
                       ("ViT-L-14:openai", "ViT-L-14-quickgelu"), ("ViT-B-32:openai", "ViT-B-32-quickgelu")]:
        rs = resolve_clip_spec(spec)
        assert (rs.kind, rs.model_name, rs.pretrained) == ("tag", name, "openai")
        assert open_clip.get_model_config(name)["quick_gelu"] is True


@pytest.mark.parametrize("spec, msg", [
    ("ViT-B-32", "names no weights"), ("ViT-Nope-1:openai", "unknown open_clip model"),
    ("ViT-B-32-quickgelu:/no/such/weights.safetensors", "does not exist"),
    ("ViT-B-32-quickgelu:laion9z", "neither a pretrained tag"), ("local-dir:/no/such/dir", "no open_clip_config"),
])
def test_bad_specs_fail_before_loading(spec, msg):
    with pytest.raises(ValueError, match=msg):
        resolve_clip_spec(spec)


def test_paper_weights_offline_give_a_clear_error():
    with pytest.raises(ModelUnavailableError, match="CLIP .small.: timm/vit_base_patch32_clip_224.openai is not in"):
        load_clip("small")
    with pytest.raises(ModelUnavailableError, match="facebook/dino-vits16"):
        load_dino("paper")


def test_weights_file_and_local_dir_specs_load_the_same_model(enc, photos, tmp_path):
    tiny_dir = Path(resolve_clip_spec("tiny").model_name[len("local-dir:"):])
    cfg_path = tmp_path / "nexus-test-tiny-clip.json"  # open_clip names a config by its file stem
    cfg_path.write_text(json.dumps(json.loads((tiny_dir / "open_clip_config.json").read_text())["model_cfg"]))
    open_clip.add_model_config(cfg_path)
    weights = tiny_dir / "open_clip_model.safetensors"
    by_file = load_clip(f"nexus-test-tiny-clip:{weights}", cache=EmbeddingCache())
    by_dir = load_clip(f"local-dir:{tiny_dir}", cache=EmbeddingCache())
    assert by_file.model_id.split("@")[1] == enc.model_id.split("@")[1]  # same weights hash
    want = enc.encode_images(photos[:2])
    torch.testing.assert_close(by_file.encode_images(photos[:2]), want)
    torch.testing.assert_close(by_dir.encode_images(photos[:2]), want)


def test_zeroshot_classifier_and_logits_by_hand(enc, photos):
    prompts = [["a photo of a red thing", "a red object"], ["a photo of a blue thing"]]
    W = zeroshot_classifier(enc, prompts)
    e = enc.encode_texts(["a photo of a red thing", "a red object", "a photo of a blue thing"])
    c0 = (e[0] + e[1]) / 2
    torch.testing.assert_close(W[:, 0], c0 / c0.norm())
    torch.testing.assert_close(W[:, 1], e[2])
    logits = zeroshot_logits(enc, photos[:2], W)
    torch.testing.assert_close(logits, 100 * enc.encode_images(photos[:2]) @ W)
    assert logits.shape == (2, 2)


def test_tiny_dino_loads_offline_and_gives_normalised_cls_features(photos):
    from transformers import ViTModel

    from nexus_gen.models.tiny import tiny_dino_dir

    den = load_dino("tiny", cache=EmbeddingCache())
    assert den.model_id.startswith("dino-tiny@sha256:")
    got = den.encode_images(photos[:3])
    ref = ViTModel.from_pretrained(str(tiny_dino_dir()), add_pooling_layer=False).eval()
    tf = dino_transform(ref.config.image_size)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in photos[:3]])
    with torch.no_grad():
        want = F.normalize(ref(pixel_values=x).last_hidden_state[:, 0], dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # by directory too
    assert load_dino(str(tiny_dino_dir()), cache=EmbeddingCache()).model_id.split("@")[1] == \
        den.model_id.split("@")[1]


def test_long_lists_go_through_in_windows_with_the_same_result(photos, monkeypatch):
    import nexus_gen.scoring.image_encoder as ie

    enc = load_clip("tiny", cache=EmbeddingCache())
    items = [photos[0], photos[1], photos[0], b"junk", photos[2]]
    whole = enc.embed_images(items)
    monkeypatch.setattr(ie, "WINDOW", 2)
    enc.cache.clear()
    windowed = enc.embed_images(items)
    torch.testing.assert_close(windowed.vectors, whole.vectors, equal_nan=True)
    assert [e is None for e in windowed.errors] == [True, True, True, False, True]
    assert enc.embed_images([]).vectors.shape == (0, enc.embed_dim)


@pytest.mark.parametrize("overlap", [True, False])
def test_both_schedules_give_the_same_embeddings(photos, overlap):
    enc = load_clip("tiny", cache=EmbeddingCache())
    want = torch.stack([_reference_embedding(enc, p)[0] for p in photos])
    items = photos + [b"junk"] + photos[:2]
    # prefetch 2: several windows / a short look-ahead, with a bad item in the middle
    res = enc.start_images(items, batch_size=2, prefetch=2, overlap=overlap).result()
    torch.testing.assert_close(res.vectors[:4], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.vectors[5:], want[:2], atol=1e-5, rtol=1e-5)
    assert res.errors[4] is not None and enc.images_forwarded == 4
