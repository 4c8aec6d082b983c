"""The imagepulse backend with tiny (random-init) models on real photos: grounded remove, add (the
pair reversed, and inpainted into a free region), style; the mask geometry on non-square images,
the paste-back (pixels outside the dilated mask unchanged), the detector columns, the rejects."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLE, REPO
from nexus_gen.edit.backends.base import EditError, SourceRef
from nexus_gen.edit.backends.imagepulse_backend import (ImagePulseBackend, box_to_mask, dilate, fit_source,
                                                paste_back)
from nexus_gen.edit.recipe import ImagePulseParams

CAT = EXAMPLE / "cat.png"
PHOTOS = REPO / "datasets_spec" / "examples" / "nexus_gen_example" / "assets" / "example_datasets" / "images"
TINY = {"detector": "tiny", "inpainter": "tiny", "stylizer": "tiny"}


def _backend(**params) -> ImagePulseBackend:
    p = {"inpaint_steps": 2, "style_steps": 2, "detector_threshold": 0.05, **params}
    return ImagePulseBackend(TINY, ImagePulseParams(**p))


def _src(path, size=96, aspect="square") -> SourceRef:
    return SourceRef("image", f"k-{path.name}", "photos", size, path=str(path), aspect=aspect)


@pytest.fixture(scope="module")
def wide_crop(tmp_path_factory):
    """A non-square crop of the cat photo (wider than tall)."""
    p = tmp_path_factory.mktemp("crop") / "cat_wide.png"
    Image.open(CAT).convert("RGB").crop((0, 200, 1024, 584)).save(p)
    return p


# -- geometry, no model
def test_box_to_mask_non_square_rows_are_y():
    h, w = 40, 100
    want = np.zeros((h, w), bool)
    for y in range(h):  # by hand: a pixel is in when its square touches the box
        for x in range(w):
            want[y, x] = 10.2 < x + 1 and x < 60 and 5 < y + 1 and y < 30.5
    got = box_to_mask((10.2, 5, 60, 30.5), h, w)
    assert got.shape == (h, w) and np.array_equal(got, want)
    # the swapped (ImagePulse) reading would put the box at rows 10..60, past the image's 40 rows
    assert got[:, 50:60].any() and not got[35:, :].any()


def test_dilate_is_a_disc():
    m = np.zeros((21, 31), bool)
    m[10, 15] = True
    got = dilate(m, 4)
    yy, xx = np.mgrid[0:21, 0:31]
    assert np.array_equal(got, (yy - 10) ** 2 + (xx - 15) ** 2 <= 16)


def test_paste_back_keeps_every_pixel_outside_the_region():
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    b = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    core = box_to_mask((20, 10, 40, 30), 48, 80)
    region = dilate(core, 6)
    out = np.asarray(paste_back(a, b, core, region, blur=3))
    assert np.array_equal(out[~region], np.asarray(a)[~region])
    assert np.array_equal(out[core], np.asarray(b)[core])
    ring = region & ~core
    assert (out[ring] != np.asarray(a)[ring]).any()


def test_fit_keep_aspect_multiple_of_16():
    img = Image.new("RGB", (1024, 384))
    out = fit_source(img, 128, "keep")
    assert out.size == (128, 48)  # 128 * 384 / 1024 = 48
    assert fit_source(img, 128, "square").size == (128, 128)


# -- the backend end to end (tiny models, real photos)
def _check_pair(out, bk):
    src, tgt = np.asarray(out.source), np.asarray(out.target)
    assert src.shape == tgt.shape and out.mask.shape == src.shape[:2]
    region = dilate(box_to_mask(tuple(out.lineage["box"]), *out.mask.shape), bk.p.mask_dilation)
    assert np.array_equal(out.mask, region)
    assert np.array_equal(src[~out.mask], tgt[~out.mask])  # paste-back: unchanged outside
    assert (src[out.mask] != tgt[out.mask]).any()


def test_remove_on_photo_and_verdict_columns():
    bk = _backend()
    out = bk.edit(_src(CAT), _spec("remove"), seed=5)
    assert out.edit_type == "remove" and out.lineage["object"] in [w.en for w in bk.vocabulary()]
    _check_pair(out, bk)
    assert out.source.tobytes() == fit_source(Image.open(CAT).convert("RGB"), 96, "square").tobytes()
    assert out.instruction["en"].endswith(f"{out.lineage['object']} out of the picture.") or \
        out.instruction["en"] == f"Remove the {out.lineage['object']}."
    v = bk.verify(out)
    assert v["object_in_mask"] is None and isinstance(v["object_present"], bool)
    assert 0.0 <= v["detector_score"] <= 1.0
    assert v["object_present"] == (v["detector_score"] >= bk.p.detector_threshold)


def test_remove_on_non_square_crop(wide_crop):
    bk = _backend()
    out = bk.edit(_src(wide_crop, size=128, aspect="keep"), _spec("remove"), seed=2)
    assert out.source.size == (128, 48) and out.mask.shape == (48, 128)
    _check_pair(out, bk)


def test_add_is_the_removal_reversed():
    bk = _backend(add_methods=["reverse"])
    add = bk.edit(_src(PHOTOS / "gen_0.png"), _spec("add"), seed=5)
    rem = bk.edit(_src(PHOTOS / "gen_0.png"), _spec("remove"), seed=5)
    assert add.edit_type == "add" and add.lineage["method"] == "reverse"
    assert add.source.tobytes() == rem.target.tobytes() and add.target.tobytes() == rem.source.tobytes()
    assert add.instruction == rem.reverse_instruction
    assert bk.verify(add)["object_in_mask"] is not None


def test_add_into_a_free_region():
    bk = _backend(add_methods=["free_region"], detector_threshold=0.999)
    out = bk.edit(_src(PHOTOS / "edit_0_0.png"), _spec("add"), seed=11)
    assert out.lineage["method"] == "free_region"
    _check_pair(out, bk)
    obj = out.lineage["object"]
    assert out.target_caption["en"].endswith(obj) and obj in out.instruction["en"]
    assert "object_in_mask" in bk.verify(out)


def test_style_img2img_with_named_style():
    bk = _backend(style_strength=0.5)
    styles = bk.styles_for("image")
    assert len(styles) >= 20
    out = bk.edit(_src(PHOTOS / "und_0.jpg"), _spec("style", styles[0]), seed=1)
    assert out.edit_type == "style" and out.target.size == out.source.size
    assert out.lineage["strength"] == 0.5 and out.lineage["style"] == styles[0]
    assert out.instruction["zh"] and out.instruction["en"]
    assert bk.verify(out) == {"object_in_mask": None, "object_present": None, "detector_score": None}


def test_remove_with_the_segmenter_mask():
    from nexus_gen.edit.backends import imagepulse_models as im

    bk = _backend()
    bk.models["segmenter"] = "tiny"
    out = bk.edit(_src(CAT), _spec("remove"), seed=1)
    seg = im.load_segmenter(bk.resolved("segmenter"), "cpu", "auto").segment(out.source, tuple(out.lineage["box"]))
    assert seg.any() and np.array_equal(out.mask, dilate(seg, bk.p.mask_dilation))
    assert not np.array_equal(out.mask, dilate(box_to_mask(tuple(out.lineage["box"]), 96, 96), 15))
    src, tgt = np.asarray(out.source), np.asarray(out.target)
    assert np.array_equal(src[~out.mask], tgt[~out.mask])
    # the random tiny SAM scatters its mask: dilated, it can cover the image -> a reject
    with pytest.raises(EditError, match="dilated mask covers"):
        bk.edit(_src(CAT), _spec("remove"), seed=0)


def _spec(t, style=None):
    from nexus_gen.edit.backends.base import EditSpec

    return EditSpec(t, style)


# -- rejects
def test_source_too_small(tmp_path):
    p = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (90, 10, 10)).save(p)
    with pytest.raises(EditError, match="40x30: too small to inpaint"):
        _backend().edit(_src(p), _spec("remove"), seed=0)


def test_detector_finds_nothing(monkeypatch):
    from nexus_gen.edit.backends import imagepulse_models as im

    class Blind:
        def detect(self, image, labels, threshold):
            return []

    monkeypatch.setattr(im, "load_detector", lambda *a: Blind())
    with pytest.raises(EditError, match="found none of the 40 vocabulary objects"):
        _backend().edit(_src(CAT), _spec("remove"), seed=0)


def test_mask_covering_the_image():
    with pytest.raises(EditError, match=r"dilated mask covers 100% of the image \(more than imagepulse.max_mask_fraction"):
        _backend(mask_dilation=200).edit(_src(CAT), _spec("remove"), seed=0)


def test_pipeline_raising_is_a_reject(monkeypatch):
    from nexus_gen.edit.backends import imagepulse_models as im

    def broken(**kw):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(im, "load_inpainter", lambda *a: broken)
    with pytest.raises(EditError, match="inpainter tiny:.* failed: RuntimeError: CUDA out of memory"):
        _backend().edit(_src(CAT), _spec("remove"), seed=0)


def test_vocab_lists_have_en_and_zh():
    from nexus_gen.edit.vocab import load_objects, load_styles

    styles, objects = load_styles(), load_objects()
    assert len(styles) >= 20 and len({s.key for s in styles}) == len(styles)
    assert all(s.en and s.zh and s.prompt for s in styles)
    assert all(any("\u4e00" <= c <= "\u9fff" for c in x.zh) for x in (*styles, *objects))


def test_bad_vocab_file_names_line(tmp_path):
    from nexus_gen.edit.vocab import VocabError, load_styles

    p = tmp_path / "s.tsv"
    p.write_text("# c\nink\tink\t水墨\tprompt\nbad line\n", encoding="utf-8")
    with pytest.raises(VocabError, match=r"s.tsv:3: expected 4"):
        load_styles(p)
