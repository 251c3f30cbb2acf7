"""Grain pipeline: pairing, crop rule, determinism, sharding, exact resume, evaluation slices.

The synthetic cases encode coordinates: ``pv[z, y, x] = z*H*W + y*W + x + 1``
(0 is left for padding), ``art = 2 * pv`` and ``weight = 3 * pv``, so every
output pixel says where it came from, and the tumor label is checked against
the mask at that decoded position.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from paresseg_jax import config_defaults
from paresseg_jax.data import cache, pipeline, windows


def _write(cache_dir, case_id, shape, liver_box, tumor_slices=None, roi=None):
    """A coded case; the tumor pattern is on every slice, or only on ``tumor_slices``.

    The ROI covers everything unless given, so no pixel's code is gated away.
    """
    depth, height, width = shape
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    code = (zz * height * width + yy * width + xx + 1).astype(np.float32)
    liver = np.zeros(shape, np.uint8)
    z0, z1, y0, y1, x0, x1 = liver_box
    liver[z0:z1, y0:y1, x0:x1] = 1
    # An asymmetric pattern, so a wrongly rotated label cannot match by chance.
    tumor = (((yy * 7 + xx * 3 + zz) % 5) == 0).astype(np.uint8)
    if tumor_slices is not None:
        tumor[[z for z in range(depth) if z not in tumor_slices]] = 0
    images = {"pv": code, "art": 2 * code}
    roi = np.ones(shape, np.uint8) if roi is None else roi
    return cache.store_case(cache_dir, case_id, images, liver, tumor, roi, 3 * code, {"tumor_type": "HCC"})


def _config(crop=16, batch=4, in_channels=3):
    config = config_defaults.get_config()
    config.data.crop_size = crop
    config.model.in_channels = in_channels
    config.train.batch_size = batch
    return config


def _decode(values, shape):
    """Coordinates (z, y, x) of coded values (0 = padding -> -1)."""
    _, height, width = shape
    code = np.rint(values).astype(np.int64) - 1
    z, rest = np.divmod(code, height * width)
    y, x = np.divmod(rest, width)
    pad = code < 0
    return np.where(pad, -1, z), np.where(pad, -1, y), np.where(pad, -1, x)


def _dihedral(window):
    """The 8 images of a 2D window under rot90 (0-3) and a flip."""
    rotated = [np.rot90(window, k) for k in range(4)]
    return rotated + [r[::-1] for r in rotated]


def _first_batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _check_patch(case, patch, crop):
    """Everything one output patch must satisfy; returns (z, top, left, dihedral index)."""
    shape = case.shape
    depth, height, width = shape
    pv, art, label, weight = patch["pv"], patch["art"], patch["label"], patch["weight"]
    assert pv.shape == (crop, crop, 3) and pv.dtype == np.float32
    assert label.shape == (crop, crop) and label.dtype == np.int32
    assert weight.shape == (crop, crop) and weight.dtype == np.float32
    np.testing.assert_array_equal(art, 2 * pv)
    np.testing.assert_array_equal(weight, 3 * pv[..., 1])
    z, y, x = _decode(pv[..., 1], shape)
    real = z >= 0
    assert real.any()
    (zc,) = set(z[real].tolist())
    for channel, dz in enumerate((-1, 0, 1)):
        zch, ych, xch = _decode(pv[..., channel], shape)
        assert set(zch[real].tolist()) == {min(max(zc + dz, 0), depth - 1)}
        np.testing.assert_array_equal(ych, y)
        np.testing.assert_array_equal(xch, x)
    np.testing.assert_array_equal(label[real], case.tumor[zc][y[real], x[real]])
    assert not label[~real].any() and not weight[~real].any()
    # The real pixels are one window of the slice, moved by one of the 8 dihedral maps.
    top, left = y[real].min(), x[real].min()
    window = np.zeros((crop, crop), np.int64)
    ys, xs = np.arange(top, min(top + crop, height)), np.arange(left, min(left + crop, width))
    window[: len(ys), : len(xs)] = ys[:, None] * width + xs[None, :] + 1 + zc * height * width
    got = np.where(real, y * width + x + 1 + zc * height * width, 0)
    matches = [k for k, image in enumerate(_dihedral(window)) if np.array_equal(image, got)]
    if height < crop or width < crop:
        assert real.sum() == height * width  # the whole small image is inside the patch
        return zc, None, None, None
    assert len(matches) == 1, "the patch is not a rotated/flipped window of the slice"
    return zc, int(top), int(left), matches[0]


def test_pairing_crop_inside_liver_box_and_all_augmentations(tmp_path):
    case = _write(tmp_path, "a", (6, 40, 48), (1, 5, 10, 30, 12, 40))
    loader = pipeline.make_train_loader(_config(crop=16, batch=4), [case], seed=3, worker_count=0)
    seen = set()
    for batch in _first_batches(loader, 12):
        for i in range(4):
            zc, top, left, k = _check_patch(case, {key: v[i] for key, v in batch.items()}, 16)
            assert 1 <= zc < 5  # only slices in the liver z-range
            assert 10 <= top and top + 16 <= 30 and 12 <= left and left + 16 <= 40  # window inside the box
            seen.add(k)
    assert seen == set(range(8))


def test_crop_covers_a_small_liver_box_and_pads_a_small_image(tmp_path):
    small_box = _write(tmp_path, "box", (3, 40, 40), (0, 3, 18, 21, 2, 6))
    tiny = _write(tmp_path, "tiny", (3, 12, 10), (0, 3, 2, 10, 2, 8))
    config = _config(crop=16, batch=2)
    for batch in _first_batches(pipeline.make_train_loader(config, [small_box], seed=0, worker_count=0), 10):
        for i in range(2):
            _, top, left, _ = _check_patch(small_box, {key: v[i] for key, v in batch.items()}, 16)
            assert top <= 18 and 21 <= top + 16  # the window contains the box along y
            assert left <= 2 and 6 <= left + 16  # start drawn in [-10, 2], clipped to [0, 24]
    for batch in _first_batches(pipeline.make_train_loader(config, [tiny], seed=0, worker_count=0), 3):
        for i in range(2):
            _check_patch(tiny, {key: v[i] for key, v in batch.items()}, 16)


def test_crop_start_rule_by_hand():
    rng = np.random.default_rng(0)
    draws = {pipeline.crop_start(rng, 10, 30, 16, 100) for _ in range(300)}
    assert draws == set(range(10, 15))
    draws = {pipeline.crop_start(rng, 20, 24, 8, 100) for _ in range(300)}
    assert draws == set(range(16, 21))
    draws = {pipeline.crop_start(rng, 2, 8, 16, 12) for _ in range(300)}
    assert draws == set(range(-4, 1))  # drawn in [-8, 2], clipped to [12 - 16, 0]: the window covers the image
    assert {pipeline.crop_start(rng, 0, 12, 16, 12) for _ in range(300)} == set(range(-4, 1))


def test_same_seed_same_batches_other_seed_other_batches(tmp_path):
    case = _write(tmp_path, "a", (6, 40, 48), (0, 6, 5, 35, 5, 43))
    config = _config()
    first = _first_batches(pipeline.make_train_loader(config, [case], seed=7, worker_count=0), 3)
    again = _first_batches(pipeline.make_train_loader(config, [case], seed=7, worker_count=0), 3)
    other = _first_batches(pipeline.make_train_loader(config, [case], seed=8, worker_count=0), 3)
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["pv"], c["pv"]) for a, c in zip(first, other))


def test_neighbouring_seeds_do_not_replay_one_stream_shifted(tmp_path):
    """Grain seeds record generators with seed + position and epoch shuffles with seed + epoch: unhashed,
    seed 8 would give seed 7's patches one position later and seed 7's second epoch order first."""
    config = _config(batch=1)
    single = _write(tmp_path, "one", (3, 40, 48), (1, 2, 5, 35, 5, 43))  # one record: only the generators differ
    seven = [b["pv"] for b in _first_batches(pipeline.make_train_loader(config, [single], seed=7, worker_count=0), 4)]
    eight = [b["pv"] for b in _first_batches(pipeline.make_train_loader(config, [single], seed=8, worker_count=0), 3)]
    assert not all(np.array_equal(a, b) for a, b in zip(seven[1:], eight))
    case = _write(tmp_path, "six", (6, 40, 48), (0, 6, 5, 35, 5, 43))  # six records: epoch orders

    def slice_order(seed, n):
        batches = _first_batches(pipeline.make_train_loader(config, [case], seed=seed, worker_count=0), n)
        return [int(_decode(b["pv"][0, 8, 8, 1], case.shape)[0]) for b in batches]

    assert slice_order(7, 12)[6:] != slice_order(8, 6)
    assert pipeline.stream_seed(7) != pipeline.stream_seed(8) and 0 <= pipeline.stream_seed(7) < 2**32


def test_processes_read_disjoint_records_covering_the_epoch(tmp_path):
    case = _write(tmp_path, "a", (12, 32, 32), (1, 10, 0, 32, 0, 32))  # 9 records: shards of 5 and 4
    config = _config(crop=16, batch=4)
    seen = []
    for process in range(2):
        loader = pipeline.make_train_loader(config, [case], seed=1, process_index=process, process_count=2, worker_count=0)
        batches = _first_batches(loader, 6)  # 12 patches: more than two epochs of either shard
        assert batches[0]["pv"].shape[0] == 2
        seen.append({int(_decode(b["pv"][i, 8, 8, 1], case.shape)[0]) for b in batches for i in range(2)})
    assert sorted(map(len, seen)) == [4, 5]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(1, 10))  # no record left out


def test_tumor_free_fraction_keeps_a_seeded_share(tmp_path):
    case = _write(tmp_path, "a", (10, 16, 16), (0, 10, 0, 16, 0, 16), tumor_slices=(2, 3, 7))
    everything = pipeline.LiverSliceSource([case], tumor_free_fraction=1.0)
    assert [everything[i]["z"] for i in range(len(everything))] == list(range(10))
    none_free = pipeline.LiverSliceSource([case], tumor_free_fraction=0.0)
    assert [none_free[i]["z"] for i in range(len(none_free))] == [2, 3, 7]
    half = pipeline.LiverSliceSource([case], tumor_free_fraction=0.5, seed=4)
    zs = [half[i]["z"] for i in range(len(half))]
    assert len(zs) == 3 + round(0.5 * 7) and {2, 3, 7} <= set(zs) and zs == sorted(zs)
    again = pipeline.LiverSliceSource([case], tumor_free_fraction=0.5, seed=4)
    assert zs == [again[i]["z"] for i in range(len(again))]


def test_slice_indices_replicate_edges():
    np.testing.assert_array_equal(windows.slice_indices(0, 5, 3), [0, 0, 1])
    np.testing.assert_array_equal(windows.slice_indices(4, 5, 3), [3, 4, 4])
    np.testing.assert_array_equal(windows.slice_indices(1, 5, 5), [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(windows.slice_indices(0, 1, 3), [0, 0, 0])


def test_errors(tmp_path):
    case = _write(tmp_path, "a", (4, 16, 16), (0, 4, 0, 16, 0, 16), tumor_slices=())
    with pytest.raises(ValueError, match="no cases"):
        pipeline.make_train_loader(_config(), [], seed=0)
    config = _config()
    config.data.tumor_free_fraction = 0.0
    with pytest.raises(ValueError, match="has no slices"):
        pipeline.make_train_loader(config, [case], seed=0, worker_count=0)
    for crop in (0, -3, 1025):
        with pytest.raises(ValueError, match="crop_size"):
            pipeline.make_train_loader(_config(crop=crop), [case], seed=0, worker_count=0)
    with pytest.raises(ValueError, match="crop_size"):
        pipeline.PairedPatch(("pv",), 3, crop_size=16.0)
    with pytest.raises(ValueError, match="multiple of the process count 2"):
        pipeline.make_train_loader(_config(batch=3), [case], seed=0, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="not divisible by the 3 local devices"):
        pipeline.make_train_loader(_config(batch=4), [case], seed=0, local_device_count=3)
    with pytest.raises(ValueError, match="odd number of slices"):
        pipeline.make_train_loader(_config(in_channels=2), [case], seed=0, worker_count=0)
    config = _config()
    config.model.phases = ("pv", "art", "dl")
    with pytest.raises(ValueError, match=r"lack some: \['a \(pv, art\)'\]"):
        pipeline.make_train_loader(config, [case], seed=0, worker_count=0)
    with pytest.raises(ValueError, match="both process_index and process_count"):
        pipeline.make_train_loader(_config(), [case], seed=0, process_index=1)


def test_one_worker_process_gives_the_same_batches(tmp_path):
    case = _write(tmp_path, "a", (6, 32, 32), (0, 6, 4, 28, 4, 28))
    config = _config()
    inline = _first_batches(pipeline.make_train_loader(config, [case], seed=5, worker_count=0), 3)
    worker = _first_batches(pipeline.make_train_loader(config, [case], seed=5, worker_count=1), 3)
    for a, b in zip(inline, worker):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


_RESUME = """
import sys
import numpy as np
import orbax.checkpoint as ocp
from paresseg_jax import config_defaults
from paresseg_jax.data import cache, pipeline


def main(cache_dir, ckpt_dir, out, n, workers):
    config = config_defaults.get_config()
    config.data.crop_size = 16
    config.train.batch_size = 4
    loader = pipeline.make_train_loader(config, cache.open_cohort(cache_dir), seed=11, worker_count=workers)
    it = iter(loader)
    with ocp.CheckpointManager(ckpt_dir) as manager:
        args = ocp.args.Composite(**{pipeline.ITERATOR_ITEM: pipeline.iterator_restore_args(it)})
        manager.restore(manager.latest_step(), args=args)
    batches = [next(it) for _ in range(n)]
    np.savez(out, **{f"{i}_{k}": np.asarray(v) for i, b in enumerate(batches) for k, v in b.items()})


if __name__ == "__main__":  # Grain's workers are spawned and re-import this file
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
"""


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_exact_resume_in_a_fresh_process(tmp_path, workers):
    import orbax.checkpoint as ocp

    cache_dir = tmp_path / "cache"
    _write(cache_dir, "a", (5, 32, 32), (0, 5, 4, 28, 4, 28))
    _write(cache_dir, "b", (4, 24, 40), (1, 4, 2, 20, 6, 30), tumor_slices=(2,))
    config = _config()
    loader = pipeline.make_train_loader(config, cache.open_cohort(cache_dir), seed=11, worker_count=workers)
    it = iter(loader)
    for _ in range(3):  # 3 x 4 of the 8 records: the restored run crosses an epoch boundary
        next(it)
    ckpt_dir = tmp_path / "ckpt"
    with ocp.CheckpointManager(ckpt_dir) as manager:
        manager.save(3, args=ocp.args.Composite(**{pipeline.ITERATOR_ITEM: pipeline.iterator_save_args(it)}))
        manager.wait_until_finished()
    expected = [{k: np.array(v) for k, v in next(it).items()} for _ in range(3)]
    script = tmp_path / "resume.py"
    script.write_text(textwrap.dedent(_RESUME))
    out = tmp_path / "resumed.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, str(script), str(cache_dir), str(ckpt_dir), str(out), "3", str(workers)], check=True, env=env)
    resumed = np.load(out)
    for i, batch in enumerate(expected):
        for key, value in batch.items():
            np.testing.assert_array_equal(resumed[f"{i}_{key}"], value)
    state = json.loads((ckpt_dir / "3" / pipeline.ITERATOR_ITEM / "process_0-of-1.json").read_text())
    assert state["worker_count"] == workers


def test_intensity_jitter_is_one_scale_and_shift_per_phase(tmp_path):
    shape = (3, 24, 24)
    code = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    images = {"pv": 0.2 + 0.5 * code / code.max(), "art": 0.3 + 0.4 * code[::-1] / code.max()}
    liver = np.ones(shape, np.uint8)
    case = cache.store_case(tmp_path, "j", images, liver, liver * 0, liver, code, {})
    record = {"case": case, "z": 1}
    plain = pipeline.PairedPatch(("pv", "art"), 3, crop_size=16).random_map(record, np.random.default_rng(2))
    jittered = pipeline.PairedPatch(("pv", "art"), 3, crop_size=16, intensity_jitter=0.1).random_map(
        record, np.random.default_rng(2)
    )
    fits = []
    for phase in ("pv", "art"):
        x, y = plain[phase].ravel().astype(np.float64), jittered[phase].ravel().astype(np.float64)
        (scale, shift), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
        np.testing.assert_allclose(y, x * scale + shift, atol=1e-6)  # one affine map per phase, no clipping here
        assert abs(scale - 1) <= 0.1 and abs(shift) <= 0.1 and (scale, shift) != (1, 0)
        fits.append((scale, shift))
    assert not np.allclose(fits[0], fits[1])
    np.testing.assert_array_equal(jittered["label"], plain["label"])
    np.testing.assert_array_equal(jittered["weight"], plain["weight"])


def test_tumor_target_gates_inputs_by_the_roi_and_liver_target_does_not(tmp_path):
    shape = (5, 24, 24)
    roi = np.zeros(shape, np.uint8)
    roi[:, 4:20, 6:18] = 1
    case = _write(tmp_path, "g", shape, (1, 4, 4, 20, 6, 18), roi=roi)
    for target in ("tumor", "liver"):
        config = _config(crop=24, batch=2)
        config.data.target = target
        batch = next(iter(pipeline.make_train_loader(config, [case], seed=0, worker_count=0)))
        for i in range(2):
            z, y, x = _decode(batch["pv"][i][..., 1], shape)
            if target == "tumor":  # zero exactly where the ROI is 0 (codes are never 0 otherwise)
                (zc,) = {int(v) for v in z[z >= 0]}
                assert (z >= 0).sum() == roi[zc].sum()
            else:  # the whole slice, any slice (the liver target samples outside the liver z-range too)
                assert (z >= 0).all()
    with pytest.raises(ValueError, match="config.data.target"):
        pipeline.PairedPatch(("pv",), 3, 16, target="vessels")


def test_auto_worker_count_loads_in_process_on_a_cpu_and_uses_spare_cpus_beside_an_accelerator():
    from paresseg_jax.data import pipeline

    assert pipeline.auto_worker_count("cpu", 16) == 0
    assert [pipeline.auto_worker_count("gpu", n) for n in (1, 2, 3, 16, 64)] == [0, 0, 1, 14, 16]
    assert pipeline.resolve_worker_count(-1) == 0  # the tests run on the CPU backend
    assert pipeline.resolve_worker_count(3) == 3
    for bad in (-2, 1.5, "2"):
        with pytest.raises(ValueError, match="config.data.worker_count"):
            pipeline.resolve_worker_count(bad)
