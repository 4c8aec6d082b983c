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
