"""GenEval's colour classifier: the masked crop on #999 and the CLIP zero-shot arithmetic,
checked against a from-scratch computation with the real (tiny, random-init) open_clip model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval.geneval.color import ColorClassifier, color_prompts, object_crop
from eval.geneval.rules import COLORS
from nexus_gen.detection import Detection


def test_prompts_are_the_official_templates():
    p = color_prompts("fire hydrant")
    assert len(p) == 10 and [row[0] for row in p][:2] == ["a photo of a red fire hydrant",
                                                         "a photo of a orange fire hydrant"]
    assert p[4] == ["a photo of a blue fire hydrant", "a photo of a blue-colored fire hydrant",
                    "a photo of a blue object"]


def test_object_crop_masks_onto_grey_and_crops_to_box():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    mask = np.zeros((20, 30), bool)
    mask[5:10, 10:20] = True
    mask[5, 10] = False
    d = Detection("dog", (8.0, 4.0, 22.0, 12.0), 0.9, mask=mask)
    crop = np.asarray(object_crop(Image.fromarray(rgb), d))
    assert crop.shape == (8, 14, 3)
    assert (crop[1:6, 2:12] == [200, 0, 0]).all(axis=-1).sum() == 49  # the masked pixels
    assert tuple(crop[0, 0]) == (153, 153, 153) and tuple(crop[1, 2]) == (153, 153, 153)
    # no mask: the plain box crop; PIL rounds float boxes
    crop = object_crop(Image.fromarray(rgb), Detection("dog", (0.4, 0.6, 10.6, 5.4), 0.9))
    assert crop.size == (11, 4) and crop.getpixel((0, 0)) == (200, 0, 0)
    # an empty box still gives a pixel to classify
    assert object_crop(Image.fromarray(rgb), Detection("dog", (3, 3, 3, 3), 0.9)).size == (1, 1)
    with pytest.raises(ValueError, match="must match"):
        object_crop(Image.fromarray(rgb), Detection("dog", (0, 0, 5, 5), 0.9, mask=mask[:10]))


@pytest.fixture(scope="module")
def tiny_classifier() -> ColorClassifier:
    return ColorClassifier.load("tiny")


def test_classifier_matches_a_from_scratch_clip_computation(tiny_classifier):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    objs = [Detection("car", (0, 0, 32, 40), 0.9),
            Detection("car", (10, 5, 60, 60), 0.8, mask=rng.random((64, 64)) > 0.5),
            Detection("car", (30, 30, 64, 64), 0.7)]
    got = tiny_classifier.classify(img, "car", objs)
    enc = tiny_classifier.encoder
    model, tok = enc.model, enc.tokenizer
    with torch.no_grad():
        cols = []
        for texts in color_prompts("car"):
            t = F.normalize(model.encode_text(tok(texts)).float(), dim=-1)
            cols.append(F.normalize(t.mean(0), dim=-1))
        W = torch.stack(cols, dim=1)
        x = torch.stack([enc.preprocess(object_crop(img, d)) for d in objs])
        logits = 100 * F.normalize(model.encode_image(x).float(), dim=-1) @ W
    assert torch.allclose(tiny_classifier.weights("car"), W, atol=1e-5)
    assert got == [COLORS[i] for i in logits.argmax(1).tolist()]
    assert tiny_classifier.classify(img, "car", []) == []
    # a per-class classifier: the class name enters the templates
    assert not torch.allclose(tiny_classifier.weights("car"), tiny_classifier.weights("dog"))


def test_classifier_is_fp32_and_paper_is_quickgelu_openai(tiny_classifier):
    from nexus_gen.scoring.clip import resolve_clip_spec

    assert tiny_classifier.encoder.dtype == torch.float32
    spec = resolve_clip_spec("paper")
    assert (spec.model_name, spec.pretrained) == ("ViT-L-14-quickgelu", "openai")

    class Bf16:  # only the attribute the check reads
        dtype, model_id = torch.bfloat16, "x"

    with pytest.raises(ValueError, match="fp32"):
        ColorClassifier(Bf16())


def test_precision_defaults_to_the_official_amp_on_cuda_and_fp32_elsewhere(tiny_classifier):
    from eval.geneval.color import default_precision, resolve_precision

    assert default_precision("cuda") == default_precision("cuda:1") == "amp"
    assert default_precision("cpu") == "fp32"
    assert resolve_precision(None, "cpu") == "fp32" and resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision(None, torch.device("cuda")) == "amp"
    with pytest.raises(ValueError, match="amp is the official fp16 autocast on CUDA.*fp32"):
        resolve_precision("amp", "cpu")
    with pytest.raises(ValueError, match="'bf16'"):
        resolve_precision("bf16", "cuda")
    assert tiny_classifier.precision == "fp32"  # loaded on cpu without a precision


def _linear_output_dtypes(model: torch.nn.Module):
    """Forward hooks on every Linear of a CLIP model: (tower, output dtype) of each call."""
    seen: list[tuple[str, torch.dtype]] = []
    handles = [m.register_forward_hook(
        lambda mod, args, out, tower=("image" if name.startswith("visual") else "text"):
        seen.append((tower, out.dtype)))
        for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return seen, handles


def _car_scene():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return img, [Detection("car", (0, 0, 40, 40), 0.9), Detection("car", (20, 10, 64, 60), 0.8)]


def test_amp_runs_the_classifier_build_and_the_crops_under_autocast():
    # No GPU here: CPU autocast with bfloat16 stands in for CUDA's fp16, same mechanism.
    from nexus_gen.scoring.clip import load_clip
    from nexus_gen.scoring.embedding_cache import EmbeddingCache

    enc = load_clip("tiny", dtype=torch.float32, cache=EmbeddingCache())
    img, objs = _car_scene()
    full = ColorClassifier(enc)
    amp = ColorClassifier(enc, precision="amp", amp_dtype=torch.bfloat16)
    seen, handles = _linear_output_dtypes(enc.model)
    try:
        full_logits = full.logits(img, "car", objs)  # fills the shared embedding cache first
        fp32_calls = list(seen)
        seen.clear()
        amp_logits = amp.logits(img, "car", objs)
    finally:
        for h in handles:
            h.remove()
    # fp32: every layer of both towers in float32; amp: every layer of both towers in bf16
    # (the fp32 embeddings cached above were not served to the amp classifier)
    assert {t for t, _ in fp32_calls} == {t for t, _ in seen} == {"text", "image"}
    assert {d for _, d in fp32_calls} == {torch.float32}
    assert {d for _, d in seen} == {torch.bfloat16}
    assert full_logits.dtype == torch.float32 and amp_logits.dtype == torch.bfloat16
    # the weights stay fp32: autocast, not a cast of the model
    assert {p.dtype for p in enc.model.parameters()} == {torch.float32}
    assert full.precision == "fp32" and amp.precision == "amp"


def test_amp_logits_match_the_official_steps_under_autocast():
    from nexus_gen.scoring.clip import load_clip

    enc = load_clip("tiny", dtype=torch.float32)
    img, objs = _car_scene()
    got = ColorClassifier(enc, precision="amp", amp_dtype=torch.bfloat16).logits(img, "car", objs)
    model, tok = enc.model, enc.tokenizer
    # clip-benchmark's zero_shot_classifier and run_classification, with amp, from scratch
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cols = []
        for texts in color_prompts("car"):
            emb = F.normalize(model.encode_text(tok(texts)), dim=-1).mean(dim=0)
            cols.append(emb / emb.norm())
        W = torch.stack(cols, dim=1)
        x = torch.stack([enc.preprocess(object_crop(img, d)) for d in objs])
        want = 100.0 * F.normalize(model.encode_image(x), dim=-1) @ W
    assert want.dtype == got.dtype == torch.bfloat16
    # a bf16 step at these magnitudes is up to 0.25: allow two
    torch.testing.assert_close(got.float(), want.float(), atol=0.5, rtol=0)
