"""The transformers Mask2Former detector (tiny, random-init, built from a config with COCO's 80
labels): official-style post-processing checked against a direct computation on its outputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from eval.geneval.mask2former import load_detector, mask_to_box, object_names


@pytest.fixture(scope="module")
def detector():
    return load_detector("tiny")


def test_mask_to_box_is_the_mask_extent():
    m = torch.zeros(10, 12, dtype=torch.bool)
    m[2:5, 3:9] = True
    assert mask_to_box(m) == (3.0, 2.0, 9.0, 5.0)
    assert mask_to_box(torch.zeros(4, 4, dtype=torch.bool)) == (0.0, 0.0, 0.0, 0.0)


def test_tiny_detector_is_a_coco_mask2former(detector):
    cfg = detector.model.config
    assert cfg.model_type == "mask2former" and cfg.num_labels == 80
    assert detector.labels == object_names() and len(set(detector.labels)) == 80
    assert detector.model_id.startswith("tiny:")


def test_detections_follow_the_official_post_processing(detector):
    image = Image.fromarray(data.chelsea()).resize((90, 60))
    dets = detector(image)
    assert len(dets) == 100
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    # from scratch: class probability (no-object dropped) x mean mask probability inside the mask
    with torch.no_grad():
        px = detector.processor(images=image, return_tensors="pt")["pixel_values"]
        out = detector.model(pixel_values=px)
    probs = out.class_queries_logits[0].softmax(-1)[:, :-1]
    q, c = divmod(int(probs.flatten().argmax()), 80)
    logits = F.interpolate(out.masks_queries_logits[0][q][None, None], size=px.shape[-2:],
                           mode="bilinear", align_corners=False)
    logits = F.interpolate(logits, size=(60, 90), mode="bilinear", align_corners=False)[0, 0]
    mask = logits > 0
    expected = float(probs[q, c]) * float(logits.sigmoid()[mask].sum() / (mask.sum() + 1e-6))
    match = [d for d in dets if d.label == object_names()[c] and np.array_equal(d.mask, mask.numpy())]
    assert match and match[0].score == pytest.approx(expected, rel=1e-5)
    for d in dets:
        assert d.mask.shape == (60, 90) and d.mask.dtype == bool
        assert d.box == mask_to_box(torch.from_numpy(d.mask))
        assert 0.0 <= d.score <= 1.0 and d.color is None
    again = detector(image)
    assert [(d.label, d.box, d.score) for d in again] == [(d.label, d.box, d.score) for d in dets]


def test_exif_orientation_is_applied(detector, tmp_path):
    img = Image.fromarray(data.astronaut()).resize((64, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the upright picture is 40 wide, 64 high
    img.save(tmp_path / "r.jpg", exif=exif)
    dets = detector(Image.open(tmp_path / "r.jpg"))
    assert dets[0].mask.shape == (64, 40)


def test_unloadable_detector_is_named():
    with pytest.raises(OSError, match="cannot load the GenEval detector '/no/such/detector'"):
        load_detector("/no/such/detector")


def test_input_size_override_keeps_masks_at_image_size():
    small = load_detector("tiny", size={"shortest_edge": 64, "longest_edge": 96})
    image = Image.fromarray(data.coffee()).resize((100, 50))
    px = small.processor(images=image, size=small.size, return_tensors="pt")["pixel_values"]
    assert tuple(px.shape[-2:]) == (64, 96)  # long side capped at 96, short 48 -> 64 (/32)
    dets = small(image)
    assert len(dets) == 100 and dets[0].mask.shape == (50, 100)
