"""Volume inference against numpy oracles, with small stand-in models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paresseg_jax.infer import predict, tiling


class Pointwise(nn.Module):
    """A 1x1 convolution over the concatenated phases: no spatial context at all."""

    phases: tuple = ("pv", "art")
    in_channels: int = 3

    @nn.compact
    def __call__(self, *inputs, train=False):
        return nn.Dense(2)(jnp.concatenate(inputs, axis=-1))


class Conv3x3(nn.Module):
    """One 3x3 convolution: a receptive field of one pixel around each output."""

    phases: tuple = ("pv", "art")
    in_channels: int = 3

    @nn.compact
    def __call__(self, *inputs, train=False):
        return nn.Conv(2, (3, 3), padding="SAME")(jnp.concatenate(inputs, axis=-1))


class Shrinking(nn.Module):
    phases: tuple = ("pv",)
    in_channels: int = 3

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Conv(2, (3, 3), padding="VALID")(x)


def _init(module, seed=0):
    inputs = [jnp.zeros((1, 8, 8, module.in_channels))] * len(module.phases)
    return module.init(jax.random.key(seed), *inputs)


def _images(shape=(5, 37, 29), seed=0):
    rng = np.random.default_rng(seed)
    return {"pv": rng.random(shape, np.float32), "art": rng.random(shape, np.float32)}


def _pointwise_oracle(variables, images):
    """float64 per voxel: features of slices (z-1, z, z+1) clamped, PV then ART."""
    depth = images["pv"].shape[0]
    zs = np.clip(np.arange(depth)[:, None] + np.array([-1, 0, 1]), 0, depth - 1)
    features = np.concatenate([np.moveaxis(images[p].astype(np.float64)[zs], 1, -1) for p in ("pv", "art")], -1)
    params = variables["params"]["Dense_0"]
    logits = features @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)
    return 1.0 / (1.0 + np.exp(logits[..., 0] - logits[..., 1]))


def test_tile_starts_cover_the_axis_evenly():
    for extent, tile, stride in [(37, 16, 8), (29, 16, 5), (224, 224, 112), (512, 224, 112), (10, 16, 8)]:
        starts = tiling.tile_starts(extent, tile, stride)
        assert starts[0] == 0
        if extent <= tile:
            assert list(starts) == [0]
            continue
        assert starts[-1] == extent - tile
        assert np.all(np.diff(starts) <= stride) and np.all(np.diff(starts) > 0)
    assert list(tiling.tile_starts(512, 224, 112)) == [0, 96, 192, 288]
    with pytest.raises(ValueError, match="stride"):
        tiling.tile_starts(10, 4, 5)


def test_tile_weights():
    # Pyramid: distance + 1 to the nearest edge, [1, 2, 2, 1] per axis, min of the two axes.
    expected = np.minimum.outer([1, 2, 2, 1], [1, 2, 2, 1]) / 2
    np.testing.assert_allclose(tiling.tile_weights(4, "pyramid"), expected)
    gaussian = tiling.tile_weights(16, "gaussian")
    assert gaussian.max() == pytest.approx(1.0) and gaussian.min() > 0
    np.testing.assert_allclose(gaussian, gaussian.T)
    np.testing.assert_allclose(gaussian, gaussian[::-1, ::-1])
    # sigma = 16 / 8 = 2; row 7 is 0.5 px from the centre, column 0 is 7.5 px; the peak is (0.5, 0.5).
    bell = lambda d: np.exp(-0.5 * (d / 2) ** 2)  # noqa: E731
    assert gaussian[7, 0] == pytest.approx(bell(0.5) * bell(7.5) / bell(0.5) ** 2, rel=1e-5)
    np.testing.assert_array_equal(tiling.tile_weights(3, "constant"), np.ones((3, 3)))
    with pytest.raises(ValueError, match="weighting"):
        tiling.tile_weights(4, "cosine")


@pytest.mark.parametrize(
    "options",
    [
        dict(mode="full", batch_size=2),
        dict(mode="full", batch_size=8, pad_multiple=1),
        dict(mode="tile", tile=16, stride=8, weighting="pyramid", batch_size=3),
        dict(mode="tile", tile=16, stride=5, weighting="gaussian", batch_size=4),
        dict(mode="tile", tile=64, stride=32, weighting="constant"),  # one tile larger than the slice
        dict(mode="full", tta=True),
    ],
)
def test_pointwise_model_matches_oracle(options):
    module = Pointwise()
    variables = _init(module)
    images = _images()
    prob = predict.predict_volume(module, variables, images, **options)
    assert prob.shape == images["pv"].shape and prob.dtype == np.float32
    np.testing.assert_allclose(prob, _pointwise_oracle(variables, images), atol=2e-6)


def _safe_from_seams(extent, tile, stride, radius):
    """Pixels that no covering tile has within ``radius`` of one of its inner edges."""
    safe = np.ones(extent, bool)
    for start in tiling.tile_starts(extent, tile, stride):
        end = start + tile
        if start > 0:
            safe[start : start + radius] = False
        if end < extent:
            safe[max(end - radius, 0) : end] = False
    return safe


def test_tiles_equal_full_slices_away_from_seams():
    # A 3x3 conv sees zeros one pixel inside a tile edge, so tiles may differ
    # from the full slice only on the pixels next to inner tile edges.
    module = Conv3x3()
    variables = _init(module, seed=1)
    images = _images(shape=(3, 41, 33), seed=1)
    full = predict.predict_volume(module, variables, images, mode="full")
    tiled = predict.predict_volume(module, variables, images, mode="tile", tile=16, stride=12)
    safe = np.outer(_safe_from_seams(41, 16, 12, 1), _safe_from_seams(33, 16, 12, 1))
    assert 0.3 < safe.mean() < 0.95
    np.testing.assert_allclose(tiled[:, safe], full[:, safe], atol=2e-6)
    assert np.abs(tiled[:, ~safe] - full[:, ~safe]).max() > 1e-4  # the seams do differ: the test can fail


def test_flip_tta_averages_the_four_flips():
    module = Conv3x3()
    variables = _init(module, seed=2)
    images = _images(shape=(3, 20, 27), seed=2)
    expected = 0.0
    for axes in [(), (1,), (2,), (1, 2)]:
        flipped = {p: np.flip(v, axes).copy() for p, v in images.items()}
        expected = expected + np.flip(predict.predict_volume(module, variables, flipped, pad_multiple=1), axes)
    tta = predict.predict_volume(module, variables, images, pad_multiple=1, tta=True)
    np.testing.assert_allclose(tta, expected / 4, atol=2e-6)


@pytest.mark.parametrize("mode", ["full", "tile"])
def test_roi_gates_inputs_and_output(mode):
    module = Pointwise()
    variables = _init(module, seed=3)
    images = _images(seed=3)
    roi = np.zeros(images["pv"].shape, np.uint8)
    roi[1:3, 5:20, 4:17] = 1  # slices 0, 3, 4 have no ROI
    prob = predict.predict_volume(module, variables, images, roi, mode=mode, tile=16, stride=8)
    gated = {p: v * roi for p, v in images.items()}
    expected = np.where(roi > 0, _pointwise_oracle(variables, gated), 0.0)
    np.testing.assert_allclose(prob, expected, atol=2e-6)
    assert not prob[roi == 0].any()


def test_roi_box_by_hand():
    inside = np.zeros((2, 200, 300), bool)
    inside[1, 50:60, 10:20] = True
    rows, cols = predict.roi_box(inside, margin=5)
    # rows 45..64 grow to 64 centred on them; cols 5..24 grow to 64, pushed inside the image
    assert (rows, cols) == (slice(23, 87), slice(0, 64))
    assert predict.roi_box(inside, margin=500) == (slice(0, 200), slice(0, 300))
    with pytest.raises(ValueError, match="roi_margin"):
        predict.roi_box(inside, margin=-1)


@pytest.mark.parametrize("mode,module", [("full", Conv3x3()), ("tile", Pointwise())])
def test_roi_crop_computes_only_the_box_and_changes_nothing_for_a_local_model(mode, module, monkeypatch):
    """A 3x3 convolution over whole slices sees zeros beyond the ROI either way, so cropping to the
    ROI box is exact (tiles move with the crop, so there only a pointwise model is unchanged);
    the model is compiled for the cropped size, not the whole slice."""
    variables = _init(module, seed=4)
    images = _images(shape=(4, 150, 140), seed=4)
    roi = np.zeros(images["pv"].shape, np.uint8)
    roi[1:3, 70:90, 30:52] = 1
    shapes = []
    compiled_forward = predict._compiled_forward
    monkeypatch.setattr(predict, "_compiled_forward",
                        lambda m, v, tta, impl, shape: shapes.append(shape) or compiled_forward(m, v, tta, impl, shape))
    options = dict(mode=mode, tile=32, stride=16, pad_multiple=1)
    whole = predict.predict_volume(module, variables, images, roi, crop_to_roi=False, **options)
    cropped = predict.predict_volume(module, variables, images, roi, crop_to_roi=True, roi_margin=0, **options)
    np.testing.assert_allclose(cropped, whole, atol=1e-6)
    assert cropped[roi > 0].std() > 0 and not cropped[roi == 0].any()
    if mode == "full":
        assert [s[1:3] for s in shapes] == [(150, 140), (64, 64)]


def test_batch_pixels_caps_the_slices_per_pass_and_not_the_result(monkeypatch):
    assert predict.batch_length(8, 512 * 512, 512 * 512) == 1
    assert predict.batch_length(8, 512 * 512, 320 * 256) == 3
    assert predict.batch_length(8, 0, 512 * 512) == 8 and predict.batch_length(8, 10, 512 * 512) == 1
    module = Pointwise()
    variables = _init(module, seed=5)
    images = _images(shape=(7, 40, 24), seed=5)
    shapes = []
    compiled_forward = predict._compiled_forward
    monkeypatch.setattr(predict, "_compiled_forward",
                        lambda m, v, tta, impl, shape: shapes.append(shape) or compiled_forward(m, v, tta, impl, shape))
    capped = predict.predict_volume(module, variables, images, batch_size=8, batch_pixels=3 * 64 * 32)
    tiles = predict.predict_volume(module, variables, images, mode="tile", tile=16, stride=16, batch_size=8,
                                   batch_pixels=5 * 16 * 16)
    big = {p: np.zeros((2, 520, 300), np.float32) for p in module.phases}
    predict.predict_volume(module, variables, big, batch_size=8)  # the CPU's default cap: 512 x 512 pixels
    assert [s[0] for s in shapes] == [3, 5, 1]  # 64 x 32 padded slices, 16 x 16 tiles, 544 x 320 slices
    np.testing.assert_allclose(capped, _pointwise_oracle(variables, images), atol=2e-6)
    np.testing.assert_allclose(tiles, _pointwise_oracle(variables, images), atol=2e-6)
    with pytest.raises(ValueError, match="batch_pixels"):
        predict.predict_volume(module, variables, images, batch_pixels=-1)
    with pytest.raises(ValueError, match="conv_impl"):
        predict.predict_volume(module, variables, images, conv_impl="winograd")


def test_foreground_is_probability_at_or_above_the_threshold_as_in_the_reference():
    prob = np.array([0.0, np.nextafter(np.float32(0.6), np.float32(0)), np.float32(0.6), 0.61, 1.0], np.float32)
    np.testing.assert_array_equal(predict.binarize(prob, np.float32(0.6)), [0, 0, 1, 1, 1])
    assert predict.binarize(prob, 0.6).dtype == np.uint8


def test_input_errors_name_the_fix():
    module = Pointwise()
    variables = _init(module)
    images = _images(shape=(2, 8, 8))
    with pytest.raises(ValueError, match="lack \\['art'\\]"):
        predict.predict_volume(module, variables, {"pv": images["pv"]})
    with pytest.raises(ValueError, match="window the CT"):
        predict.predict_volume(module, variables, {"pv": images["pv"] * 400, "art": images["art"]})
    with pytest.raises(ValueError, match="register the phases"):
        predict.predict_volume(module, variables, {"pv": images["pv"], "art": images["art"][:, :4]})
    with pytest.raises(ValueError, match="mode"):
        predict.predict_volume(module, variables, images, mode="sliding")
    shrinking = Shrinking()
    with pytest.raises(ValueError, match="pad_multiple"):
        predict.predict_volume(shrinking, _init(shrinking), {"pv": images["pv"]})


TRACES = []


class CountedPointwise(Pointwise):
    """`Pointwise` that records each time it is traced (a Python side effect runs only while tracing)."""

    @nn.compact
    def __call__(self, *inputs, train=False):
        TRACES.append(inputs[0].shape)
        return nn.Dense(2)(jnp.concatenate(inputs, axis=-1))


def test_a_volume_traces_the_model_once_per_batch_shape():
    module = CountedPointwise()
    variables = _init(module)
    TRACES.clear()
    images = _images((7, 40, 24), seed=3)
    prob = predict.predict_volume(module, variables, images, batch_size=4, pad_multiple=8)
    assert TRACES == [(4, 40, 24, 3)]  # init traced before the clear; checking the output shape traced nothing more
    np.testing.assert_allclose(prob, _pointwise_oracle(variables, images), atol=1e-5)
