"""A study's overheads removed without changing a voxel: each faster path against the one it replaced."""

import threading
import time

import jax
import numpy as np
import pytest
import SimpleITK as sitk

from paresseg_jax import models, stage_times
from paresseg_jax.data import phantom, preprocess
from paresseg_jax.data.cache import bounding_box
from paresseg_jax.data.case import liver_from_labels
from paresseg_jax.data.images import labels_on_grid
from paresseg_jax.infer import cascade, predict, study
from paresseg_jax.errors import BadInputError
from paresseg_jax.infer.ensemble import Ensemble

from standin_models import PhaseContrast, save_standin
from test_infer_study import save_tiny_model
from test_one_preparation import FAST_REGISTRATION


def _whole_image_result(segmenter, case, **liver):
    """``(result, windowed images)`` as before: every phase resampled whole, then the cascade."""
    images, _ = preprocess.prepare_phases(case, segmenter.preprocess_config)
    result = cascade.segment_study(images, segmenter.tumor, roi_dilation=segmenter.preprocess_config["roi_dilation"],
                                   **liver, **segmenter.options)
    return result, images


def _roi_box(result, shape):
    """The ROI's box as slices, checked to be smaller than the volume (else nothing was left out)."""
    box = bounding_box(result["roi"] > 0)
    assert np.prod(np.subtract(box[1::2], box[::2])) < np.prod(shape)
    return tuple(slice(box[2 * a], box[2 * a + 1]) for a in range(3))


def _same(result, images, expected, expected_images):
    for key in ("prob", "mask", "roi", "labels"):
        assert np.array_equal(result[key], expected[key]), key
    inside = _roi_box(result, images["pv"].shape)
    for phase in images:
        assert np.array_equal(images[phase][inside], expected_images[phase][inside]), phase


def test_art_resampled_in_the_given_liver_roi_box_changes_no_voxel(tmp_path):
    case = phantom.make_case(4, "HCC", (8, 48, 48))
    segmenter = study.Segmenter.load(save_tiny_model(tmp_path / "model"), eval_config={"threshold": 0.5},
                                     preprocess_config=FAST_REGISTRATION)
    result, images, _ = segmenter.segment_case(case, liver=case.liver)
    expected, expected_images = _whole_image_result(segmenter, case, liver=case.liver)
    _same(result, images, expected, expected_images)
    assert result["prob"].any()


def test_art_resampled_in_the_predicted_liver_roi_box_changes_no_voxel(tmp_path):
    case = phantom.make_case(4, "HCC", (8, 48, 48))
    tumor = save_standin(tmp_path / "tumor", context=1.0)
    liver = save_standin(tmp_path / "liver", phases=("pv",), rule="bright", offset=0.6)
    segmenter = study.Segmenter.load(tumor, liver, eval_config={"threshold": 0.5}, preprocess_config=FAST_REGISTRATION)
    result, images, _ = segmenter.segment_case(case)
    expected, expected_images = _whole_image_result(segmenter, case, liver_model=segmenter.liver)
    _same(result, images, expected, expected_images)
    assert result["mask"].any()



def test_whole_phases_resamples_every_voxel_for_overlays_that_show_them(tmp_path):
    case = phantom.make_case(4, "HCC", (8, 48, 48))
    segmenter = study.Segmenter.load(save_tiny_model(tmp_path / "model"), preprocess_config=FAST_REGISTRATION)
    _, images, _ = segmenter.segment_case(case, liver=case.liver, whole_phases=True)
    expected, _ = preprocess.prepare_phases(case, segmenter.preprocess_config)
    for phase in expected:
        assert np.array_equal(images[phase], expected[phase]), phase


@pytest.mark.parametrize("nearest", [False, True])
def test_apply_transform_in_a_box_gives_the_whole_grids_voxels(nearest):
    case = phantom.make_case(2, "HCC", (6, 40, 36))
    transform, _ = preprocess.register_phase(case.phases["pv"], case.phases["art"], case,
                                             FAST_REGISTRATION["registration"])
    moving = case.phases["art"] if not nearest else case.liver
    image = case.geometry.apply_to(sitk.GetImageFromArray(moving))  # the whole grid, resampled as before
    interpolator, default = (sitk.sitkNearestNeighbor, 0) if nearest else (sitk.sitkLinear, float(moving.min()))
    whole = sitk.GetArrayFromImage(sitk.Resample(image, image, transform, interpolator, default))
    assert np.array_equal(preprocess.apply_transform(moving, case, transform, nearest=nearest), whole)
    box = (1, 5, 3, 29, 7, 30)
    part = preprocess.apply_transform(moving, case, transform, nearest=nearest, box=box)
    inside = np.zeros(case.shape, bool)
    inside[1:5, 3:29, 7:30] = True
    assert np.array_equal(part[inside], whole[inside]) and np.all(part[~inside] == default)


def test_tumor_forward_compiles_in_a_thread_beside_registration(tmp_path, monkeypatch):
    case = phantom.make_case(4, "HCC", (8, 48, 48))
    segmenter = study.Segmenter.load(save_tiny_model(tmp_path / "model"), eval_config={"threshold": 0.5},
                                     preprocess_config=FAST_REGISTRATION)
    seen = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            value = function(*args, **kwargs)
            seen[name] = (threading.current_thread() is threading.main_thread(), start, time.perf_counter())
            return value
        return wrapper

    monkeypatch.setattr(Ensemble, "plans", timed("plans", Ensemble.plans))
    monkeypatch.setattr(preprocess, "register_phase", timed("registration", preprocess.register_phase))
    with stage_times.recording() as times:
        result, _, _ = segmenter.segment_case(case, liver=case.liver)
    record = times.record()
    assert not seen["plans"][0] and seen["registration"][0]  # compiled in a thread, registered in this one
    assert seen["plans"][1] < seen["registration"][2]  # started before registration ended
    assert record["beside"]["compilation"] > 0 and "compilation" not in record["not_run"]
    assert record["forward_calls"] == 1 and record["forward_flops"] > 0  # the thread's passes counted with the rest
    expected, _ = _whole_image_result(segmenter, case, liver=case.liver)
    assert np.array_equal(result["prob"], expected["prob"])


def test_an_error_beside_the_compilation_waits_for_its_thread():
    """A registration error propagates only once the compilation thread has ended (its own error ignored),
    so nothing the thread prints follows the error line."""
    ended = threading.Event()

    def compile_then_fail():
        time.sleep(0.3)
        ended.set()
        raise RuntimeError("the thread's own error")

    with pytest.raises(BadInputError, match="registration failed"):
        with stage_times.beside("compilation", compile_then_fail):
            raise BadInputError("registration failed")
    assert ended.is_set()


def test_a_plan_is_refused_for_another_roi():
    module = PhaseContrast(context=1.0)
    variables = models.init_variables(module, jax.random.key(0))
    images = {p: np.random.default_rng(1).random((4, 32, 32), np.float32) for p in module.phases}
    roi = np.zeros((4, 32, 32), np.uint8)
    roi[1:3, 8:20, 8:20] = 1
    plan = predict.volume_plan(module, variables, roi.shape, roi)
    assert np.array_equal(predict.predict_volume(module, variables, images, roi, plan=plan),
                          predict.predict_volume(module, variables, images, roi))
    other = roi.copy()
    other[0, 0, 0] = 1
    for wrong in ({"roi": other}, {"roi": None}, {"roi": roi, "tta": True}):
        with pytest.raises(ValueError, match="a plan is made for one volume shape and ROI"):
            predict.predict_volume(module, variables, images, plan=plan, **wrong)


@pytest.mark.parametrize("stored", [np.uint8, np.int16])
def test_masks_are_read_in_their_stored_integer_type(tmp_path, stored):
    labels = np.random.default_rng(0).integers(0, 3, (4, 16, 16)).astype(stored)
    image = sitk.GetImageFromArray(labels)
    read = labels_on_grid(image, image, tmp_path / "mask.nii.gz")
    assert read.dtype == stored and np.array_equal(read, labels)  # never a float64 or int64 copy
    liver = liver_from_labels(read, "liver.nii.gz", liver_label=2)
    assert liver.dtype == np.uint8 and np.array_equal(liver, labels == 2)
    with pytest.raises(BadInputError, match="non-integer"):  # a float mask is still checked
        labels_on_grid(sitk.GetImageFromArray(labels + np.float32(0.5)), image, "mask.nii.gz")
