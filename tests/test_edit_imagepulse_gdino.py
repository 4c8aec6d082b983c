"""The Grounding DINO branch of the imagepulse detector, with a tiny random-init
GroundingDinoForObjectDetection built locally (`detector: tiny-grounding-dino`)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import EXAMPLE
from nexus_gen.edit.backends import imagepulse_models as im
from nexus_gen.edit.backends.base import EditSpec, SourceRef
from nexus_gen.edit.backends.imagepulse_backend import ImagePulseBackend, box_to_mask, dilate
from nexus_gen.edit.recipe import ImagePulseParams


@pytest.fixture(scope="module")
def gdino():
    return im.load_detector(im.resolve("detector", "tiny-grounding-dino"), "cpu", "auto")


def test_tiny_grounding_dino_loads_by_its_class(gdino):
    from transformers import GroundingDinoForObjectDetection

    assert isinstance(gdino.model, GroundingDinoForObjectDetection) and gdino.kind == "grounding-dino"
    assert im.model_id_of("detector", "tiny-grounding-dino") == "tiny:grounding-dino-tiny"


def test_queries_go_to_the_name_whose_tokens_they_score(gdino):
    """The prompt "cat. dog. red car." tokenizes (by hand, one WordPiece per character) as
    [CLS] c ##a ##t . d ##o ##g . r ##e ##d c ##a ##r . [SEP]: "dog" is positions 5-7, "red
    car" 9-14, the stops 4, 8 and 15."""
    ids = gdino.processor(text="cat. dog. red car.", images=Image.new("RGB", (96, 64)),
                          return_tensors="pt")["input_ids"][0].tolist()
    tok = gdino.processor.tokenizer
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "c", "##a", "##t", ".", "d", "##o", "##g", ".", "r", "##e",
                                              "##d", "c", "##a", "##r", ".", "[SEP]"]
    logits = torch.full((1, 3, 256), -10.0)
    logits[0, 0, 6] = 4.0  # query 0: inside "dog"
    logits[0, 1, 13] = 2.0  # query 1: inside "red car"
    logits[0, 2, 4] = 9.0  # query 2: only the full stop after "cat": no name
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    found = gdino._grounded(SimpleNamespace(logits=logits, pred_boxes=boxes), ids, 3, 0.3, 96, 64)
    assert [f[0] for f in found] == [1, 2]
    assert found[0][1] == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert found[0][2] == pytest.approx([38.4, 19.2, 57.6, 44.8])  # (0.5 -+ 0.1) * 96, (0.5 -+ 0.2) * 64
    assert found[1][2] == pytest.approx([0.0, 0.0, 48.0, 32.0])


def test_remove_with_tiny_grounding_dino():
    bk = ImagePulseBackend({"detector": "tiny-grounding-dino", "inpainter": "tiny"},
                           ImagePulseParams(inpaint_steps=2, detector_threshold=0.05))
    out = bk.edit(SourceRef("image", "k", "photos", 96, path=str(EXAMPLE / "cat.png")), EditSpec("remove"), 3)
    assert out.lineage["models"]["detector"] == "tiny:grounding-dino-tiny"
    region = dilate(box_to_mask(tuple(out.lineage["box"]), 96, 96), bk.p.mask_dilation)
    assert np.array_equal(out.mask, region)
    src, tgt = np.asarray(out.source), np.asarray(out.target)
    assert np.array_equal(src[~out.mask], tgt[~out.mask])
    v = bk.verify(out)
    assert isinstance(v["object_present"], bool) and 0.0 <= v["detector_score"] <= 1.0
    assert v["object_present"] == (v["detector_score"] >= 0.05)
