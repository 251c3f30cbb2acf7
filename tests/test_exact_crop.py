"""The exact ROI crop (`infer.exact_crop`) against whole slices, on PA-ResSeg with nonzero attention gammas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paresseg_jax import models
from paresseg_jax.infer import exact_crop, predict

SIZE = 256


def _pa_resseg():
    """PA-ResSeg width 4, attention gammas 0.5, BN statistics and shifts moved off their init (so an all-zero
    input has features far from 0), and a head that spreads the probabilities over (0.1, 0.9): at random init
    they sit within 0.01 of each other and would hide any difference."""
    module = models.create("paresseg", width=4)
    rng = np.random.default_rng(0)

    def moved(path, x):
        name = jax.tree_util.keystr(path)
        if "gamma" in name:
            return jnp.full_like(x, 0.5)
        if "'mean'" in name or ("params" in name and "'bias'" in name):
            return jnp.asarray(rng.normal(0, 0.2, x.shape), x.dtype)
        if "'var'" in name:
            return jnp.asarray(rng.uniform(0.5, 2, x.shape), x.dtype)
        return x

    variables = jax.tree_util.tree_map_with_path(moved, dict(models.init_variables(module, jax.random.key(0))))
    noise = {p: rng.uniform(0, 1, (1, SIZE, SIZE)).astype(np.float32) for p in module.phases}
    p = predict.predict_volume(module, variables, noise)
    head = variables["params"]["final"]["3"]
    head["kernel"] = head["kernel"] * 100
    head["bias"] = (head["bias"] * 100).at[1].add(-100 * np.log(p / (1 - p)).mean())
    return module, variables


@pytest.mark.parametrize("tta", [False, pytest.param(True, marks=pytest.mark.slow)])  # tta: four flipped crops
def test_whole_slices_from_a_crop_equal_whole_slices(tta, monkeypatch):
    """A 32 x 28 px ROI on 256 x 256 slices: the fine scales run on a 192 x 192 crop, deeper ones, the attention's
    energies and the decoder's input from the zero-input maps outside it, and the probabilities equal whole slices'
    (breaking the construction: zeros instead of the zero-input maps 1.1e-3, no halo 5.5e-6, an 8 px margin
    9e-5, no decoder margin 0.018). The box crop (``crop_to_roi``: deep scales and energies from the crop only)
    is off by 0.064."""
    module, variables = _pa_resseg()
    rng = np.random.default_rng(1)
    images = {p: rng.uniform(0, 1, (3, SIZE, SIZE)).astype(np.float32) for p in module.phases}
    roi = np.zeros((3, SIZE, SIZE), np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    roi[1] = ((yy - 120) / 16) ** 2 + ((xx - 140) / 14) ** 2 <= 1
    frames = []
    compiled_forward = exact_crop.compiled_forward
    monkeypatch.setattr(exact_crop, "compiled_forward", lambda *a: frames.append(a[4]) or compiled_forward(*a))
    from_crop = predict.predict_volume(module, variables, images, roi, tta=tta)  # the default
    assert frames == [(SIZE, SIZE)]
    assert exact_crop.crop_rects(roi > 0, (SIZE, SIZE)) == ((24, 44, 192, 192), (64, 64, 128, 128))
    monkeypatch.setattr(exact_crop, "supported", lambda module: False)
    whole = predict.predict_volume(module, variables, images, roi, tta=tta)
    assert frames == [(SIZE, SIZE)]  # not computed from a crop this time
    np.testing.assert_allclose(from_crop, whole, rtol=0, atol=1e-6)
    if not tta:
        assert whole[roi > 0].min() < 0.3 and whole[roi > 0].max() > 0.7
        boxed = predict.predict_volume(module, variables, images, roi, crop_to_roi=True, roi_margin=32)
        assert np.abs(boxed - whole).max() > 0.01


def test_the_crop_is_used_only_where_it_pays():
    """A ROI whose crop covers most of the slice, or a tile mode, computes whole slices as they are."""
    inside = np.zeros((2, 256, 256), bool)
    inside[1, 100:140, 100:140] = True
    module = models.create("paresseg", width=4)
    assert predict._exact_plan(module, inside, "full", 32, False) is not None
    assert predict._exact_plan(module, inside, "tile", 32, False) is None
    assert predict._exact_plan(models.create("unet", width=4), inside, "full", 32, False) is None
    inside[1, 20:230, 20:230] = True
    assert predict._exact_plan(module, inside, "full", 32, False) is None


def test_crop_rects_cover_the_margins_on_the_pooling_and_decoder_grids():
    inside = np.zeros((2, 512, 480), bool)
    inside[1, 150:400, 60:280] = True
    (row, col, height, width), (out_row, out_col, out_height, out_width) = exact_crop.crop_rects(inside, (512, 480))
    assert row <= 150 - exact_crop.CROP_MARGIN and row + height >= 400 + exact_crop.CROP_MARGIN
    assert col == 0 and width >= 280 + exact_crop.CROP_MARGIN  # the slice's side: its padding is the whole slice's
    assert row % exact_crop.ALIGN == 0 and height % 64 == 0 and width % 64 == 0
    assert out_row <= 150 - 32 and out_row + out_height >= 400 + 32
    assert out_col <= 60 - 32 and out_col + out_width >= 280 + 32
    assert out_row % 32 == 0 and out_col % 32 == 0
    assert exact_crop.frame_shape(500, 470, 1) == (512, 480) and exact_crop.frame_shape(500, 470, 64) == (512, 512)
