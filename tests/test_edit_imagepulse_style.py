"""InstantStyle in the imagepulse backend: canny edges without OpenCV (checked by hand on a square
and against scikit-image's Canny on a photo), ControlNet canny, an IP-Adapter style reference
and the img2img refine, with tiny random-init models built locally."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import REPO
from nexus_gen.edit.backends.base import EditSpec, SourceRef
from nexus_gen.edit.backends.imagepulse_backend import ImagePulseBackend
from nexus_gen.edit.canny import canny, canny_control_image, hysteresis
from nexus_gen.edit.recipe import ImagePulseParams

PHOTOS = REPO / "datasets_spec" / "examples" / "nexus_gen_example" / "assets" / "example_datasets" / "images"
STYLE = "oil_painting"


def _square() -> Image.Image:
    a = np.zeros((32, 32), np.uint8)
    a[8:24, 8:24] = 255  # rows and columns 8..23
    return Image.fromarray(a)


# -- canny
def test_canny_square_by_hand():
    e = canny(_square(), 100, 200, sigma=0)
    # a step between 0 and 255 gives Sobel magnitude 4 * 255 on both pixels of the step; the
    # suppression keeps the first of the two: rows / columns 7 (outside) and 23 (inside)
    for r in range(10, 22):
        assert np.flatnonzero(e[r]).tolist() == [7, 23]
    for c in range(10, 22):
        assert np.flatnonzero(e[:, c]).tolist() == [7, 23]
    near = np.zeros((32, 32), bool)
    near[6:26, 6:26] = True
    near[10:22, 10:22] = False  # the square's boundary +- 2 px
    assert e.any() and not (e & ~near).any()
    assert not canny(Image.new("L", (32, 32), 128)).any()


def test_canny_is_deterministic_and_rgb_control():
    img = Image.open(PHOTOS / "gen_0.png").convert("RGB").resize((96, 64))
    a, b = canny_control_image(img, 50, 100, 1.5), canny_control_image(img.copy(), 50, 100, 1.5)
    assert a.tobytes() == b.tobytes() and a.mode == "RGB" and a.size == (96, 64)
    assert set(np.unique(np.asarray(a))) == {0, 255}


def test_hysteresis_keeps_weak_pixels_touching_strong_ones():
    weak = np.zeros((5, 8), bool)
    weak[1, 0:4] = True  # a weak line touching a strong pixel at (1, 3)
    weak[3, 6:8] = True  # an isolated weak pair
    strong = np.zeros_like(weak)
    strong[1, 3] = True
    want = np.zeros_like(weak)
    want[1, 0:4] = True
    assert np.array_equal(hysteresis(weak, strong), want)


def test_canny_agrees_with_scikit_image():
    from skimage.feature import canny as sk_canny

    img = Image.open(PHOTOS / "gen_0.png").convert("L").resize((128, 128))
    ours = canny(img, 50, 100, 1.5)
    ref = sk_canny(np.asarray(img).astype(float), sigma=1.5, low_threshold=50, high_threshold=100)
    near_ref = ndimage.distance_transform_cdt(~ref, metric="chessboard") <= 1
    near_ours = ndimage.distance_transform_cdt(~ours, metric="chessboard") <= 1
    assert ours.sum() > 500 and near_ref[ours].mean() > 0.95 and near_ours[ref].mean() > 0.95


def test_canny_thresholds_validated():
    with pytest.raises(ValueError, match="low <= high"):
        canny(_square(), 200, 100)


# -- the style stage with tiny models
def _backend(models: dict, refs=None, **params) -> ImagePulseBackend:
    p = {"style_steps": 2, "style_strength": 0.7, "style_adapter_scale": {"up": {"block_0": [0.0, 1.0]}},
         "canny_low": 50, "canny_high": 100, **params}
    if refs is not None:
        p["style_references"] = str(refs)
    return ImagePulseBackend({"stylizer": "tiny", **models}, ImagePulseParams(**p))


def _style(bk, seed=3):
    src = SourceRef("image", "k-gen0", "photos", 64, path=str(PHOTOS / "gen_0.png"))
    return bk.edit(src, EditSpec("style", STYLE), seed)


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    d = tmp_path_factory.mktemp("refs")
    Image.open(PHOTOS / "und_0.jpg").convert("RGB").save(d / f"{STYLE}.png")
    Image.new("RGB", (8, 8)).save(d / "not_a_style.png")
    return d


def test_controlnet_canny_changes_the_output():
    plain = _style(_backend({}))
    out = _style(_backend({"controlnet": "tiny"}))
    assert out.lineage["models"]["controlnet"] == "tiny:tiny-controlnet-sd"
    assert out.lineage["canny"]["low"] == 50 and 0 < out.lineage["canny"]["edge_fraction"] < 1
    assert out.target.size == plain.target.size and out.target.tobytes() != plain.target.tobytes()
    assert _style(_backend({"controlnet": "tiny"})).target.tobytes() == out.target.tobytes()


def test_ip_adapter_reference_and_refine(refs, tmp_path):
    bk = _backend({"controlnet": "tiny", "style_adapter": "tiny", "refiner": "tiny"}, refs)
    assert bk.check_models() == [] and bk.styles_for("image") == (STYLE,)
    out = _style(bk)
    assert out.lineage["style_reference"] == f"{STYLE}.png" and out.lineage["refine_strength"] == 0.6
    other = tmp_path / "other"
    other.mkdir()
    Image.open(PHOTOS / "gen_0.png").convert("RGB").save(other / f"{STYLE}.png")
    changed = _style(_backend({"controlnet": "tiny", "style_adapter": "tiny", "refiner": "tiny"}, other))
    assert changed.target.tobytes() != out.target.tobytes()  # the reference image is used
    no_refine = _style(_backend({"controlnet": "tiny", "style_adapter": "tiny"}, refs))
    assert "refine_strength" not in no_refine.lineage and no_refine.target.tobytes() != out.target.tobytes()


def test_style_adapter_needs_references(tmp_path):
    msgs = _backend({"style_adapter": "tiny"}).check_models()
    assert any("needs imagepulse.style_references" in m for m in msgs)
    empty = tmp_path / "empty"
    empty.mkdir()
    msgs = _backend({"style_adapter": "tiny"}, empty).check_models()
    assert any("has no image named by a style key" in m for m in msgs)
    msgs = ImagePulseBackend({"controlnet": "tiny"}, ImagePulseParams()).check_models()
    assert msgs == ["models.controlnet: is part of the style stage and needs models.stylizer"]


def test_hub_id_check_is_fast_offline(monkeypatch):
    """An id not in the cache with the hub unreachable fails at once, without asking the hub."""
    import huggingface_hub

    from nexus_gen.edit.backends import imagepulse_models as im
    from nexus_gen.scoring import hub

    def never(*a, **k):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", never)
    monkeypatch.setattr(hub, "offline_mode", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: False)
    why = im.check(im.resolve("style_adapter", "paper"))
    assert why.startswith("h94/IP-Adapter is not in the local Hugging Face cache and ")
    assert "(sdxl_models/ip-adapter_sdxl.safetensors)" in why and "cannot be reached" in why
    monkeypatch.setattr(hub, "offline_mode", lambda: True)
    assert "HF_HUB_OFFLINE=1" in im.check(im.resolve("controlnet", "paper"))
