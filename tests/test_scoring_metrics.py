"""The metric formulas against values worked out by hand from fixed vectors and pixel arrays."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nexus_gen.scoring import metrics as M
from nexus_gen.scoring.pixels import mask_array, pixel_scores


def test_clip_t_is_the_cosine_of_image_and_text():
    # (3,4).(4,3) = 24, |.| = 5 * 5 -> 0.96; unnormalised inputs are normalised first
    assert M.clip_t([3.0, 4.0], [4.0, 3.0]) == pytest.approx(0.96)
    assert M.clip_t(torch.tensor([6.0, 8.0]), torch.tensor([0.4, 0.3])) == pytest.approx(0.96)
    got = M.clip_t([[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, -1.0]])
    np.testing.assert_allclose(got, [1 / math.sqrt(2), -1.0])


def test_clipscore_is_2_5_times_the_clipped_cosine_and_prefix():
    assert M.CLIPSCORE_PREFIX == "A photo depicts "
    assert M.clipscore([3.0, 4.0], [4.0, 3.0]) == pytest.approx(2.4)
    assert M.clipscore([1.0, 0.0], [-1.0, 0.0]) == 0.0  # negative cosine clipped at 0
    np.testing.assert_allclose(M.clipscore([[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, -1.0]]),
                               [2.5 / math.sqrt(2), 0.0])


def test_clip_i_and_dino_are_cosines_of_two_image_features():
    assert M.clip_i([1.0, 2.0, 2.0], [2.0, 1.0, 2.0]) == pytest.approx(8 / 9)
    assert M.dino([0.0, 5.0], [0.0, 0.1]) == pytest.approx(1.0)
    assert M.dino([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)


def test_clip_dir_is_the_cosine_of_image_change_and_caption_change():
    # d_img = (0,1,0) - (1,0,0) = (-1,1,0); d_txt = (0,0,1) - (1,0,0) = (-1,0,1): cos = 1 / 2
    assert M.clip_dir([1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]) == pytest.approx(0.5)
    # each embedding is L2-normalised before the differences: scaling one changes nothing
    assert M.clip_dir([3, 0, 0], [0, 0.5, 0], [2, 0, 0], [0, 0, 7]) == pytest.approx(0.5)
    # the reverse edit (roles swapped) has the same directional similarity
    assert M.clip_dir([0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0]) == pytest.approx(0.5)
    # opposite directions
    assert M.clip_dir([1, 0], [0, 1], [0, 1], [1, 0]) == pytest.approx(-1.0)


def test_l1_and_l2_are_mean_absolute_and_mean_squared_pixel_differences():
    a = np.zeros((2, 2, 3))
    b = np.zeros((2, 2, 3))
    b[0, 0] = [0.5, 0.5, 0.5]
    b[1, 1, 0] = 1.0
    # |diff| sums to 1.5 + 1.0 = 2.5 over 12 values; squares to 0.75 + 1.0 = 1.75
    assert M.l1(a, b) == pytest.approx(2.5 / 12)
    assert M.l2(a, b) == pytest.approx(1.75 / 12)
    with pytest.raises(ValueError, match="resize"):
        M.l1(a, np.zeros((3, 2, 3)))


def test_masked_l1_inside_and_outside_the_mask():
    a = np.zeros((2, 2, 3))
    b = np.zeros((2, 2, 3))
    b[0, 0] = 0.6
    b[1, 1] = 0.3
    mask = np.array([[True, False], [False, False]])
    assert M.masked_l1(a, b, mask, inside=True) == pytest.approx(0.6)
    assert M.masked_l1(a, b, mask, inside=False) == pytest.approx(0.3 / 3)
    assert math.isnan(M.masked_l1(a, b, np.zeros((2, 2), bool), inside=True))
    with pytest.raises(ValueError, match="mask shape"):
        M.masked_l1(a, b, np.ones((3, 3), bool))


def test_pixel_scores_resize_the_edited_image_to_the_reference_size(tmp_path):
    ref = Image.new("RGB", (40, 30), (100, 100, 100))
    edited = Image.new("RGB", (80, 64), (151, 100, 49))  # a constant image stays constant resized
    p = tmp_path / "ref.png"
    ref.save(p)
    mask = np.zeros((30, 40), bool)
    mask[:, :20] = True
    got = pixel_scores(edited, str(p), mask=mask)
    assert got["l1"] == pytest.approx((51 + 0 + 51) / 3 / 255, abs=1e-6)
    assert got["l2"] == pytest.approx(2 * (51 / 255) ** 2 / 3, abs=1e-6)
    assert got["l1_inside"] == pytest.approx(got["l1"], abs=1e-6)
    assert got["l1_outside"] == pytest.approx(got["l1"], abs=1e-6)


def test_mask_array_resizes_binary_masks_by_nearest_neighbour():
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    big = mask_array(m, (8, 8))
    assert big.shape == (8, 8) and big.dtype == bool
    assert big[:4, :4].all() and not big[4:, :].any() and not big[:, 4:].any()
