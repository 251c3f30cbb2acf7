"""One preparation path: a scored case's cached arrays are what paresseg-predict feeds the model for its files;
and the registration error that chose the whole image as the registration region."""

import numpy as np
import pytest

from paresseg_jax.benchmarks import registration
from paresseg_jax.data import cache, phantom, preprocess
from paresseg_jax.data.case import Case
from paresseg_jax.infer import study

from test_infer_study import save_tiny_model

FAST_REGISTRATION = {"registration": {"initial_iterations": 10, "bspline_iterations": 4, "metric_samples": 2000}}


def test_evaluation_cache_holds_exactly_what_predict_feeds_the_model(tmp_path, monkeypatch):
    cohort = phantom.make_cohort(tmp_path / "cohort", 2, seed=3, shape=(8, 48, 48), progress=False)
    cache_dir = preprocess.preprocess_cohort(cohort, tmp_path / "cache", FAST_REGISTRATION, progress=False, workers=1)
    cached = cache.open_cohort(cache_dir, ["case_0000"])[0]
    model = save_tiny_model(tmp_path / "model")
    fed = {}

    def capture(images, *args, **kwargs):
        fed.update(images)
        raise KeyboardInterrupt  # the model's inputs are all this test needs

    monkeypatch.setattr(study, "segment_study", capture)
    phases = {p: cohort / "case_0000" / f"{p}.nii.gz" for p in ("pv", "art")}
    with pytest.raises(KeyboardInterrupt):
        study.predict_files(phases, model, None, liver=cohort / "case_0000" / "liver.nii.gz",
                            preprocess_config=FAST_REGISTRATION)
    assert cached.metadata["registration"]["art"]["metric_after"] < cached.metadata["registration"]["art"]["metric_before"]
    for phase in ("pv", "art"):  # what the tumor model reads: its inputs are 0 outside the ROI
        assert fed[phase].dtype == cached.image(phase).dtype
        np.testing.assert_array_equal(preprocess.roi_gate(fed[phase], cached.roi),
                                      preprocess.roi_gate(cached.image(phase), cached.roi))


def test_prepare_phases_never_reads_the_masks():
    case = phantom.make_case(4, "HCC", (8, 48, 48))
    without = Case(case.phases, None, None, case.spacing, case.origin, case.direction, case.metadata)
    images, _ = preprocess.prepare_phases(case, FAST_REGISTRATION)
    blind, _ = preprocess.prepare_phases(without, FAST_REGISTRATION)
    for phase in images:
        np.testing.assert_array_equal(images[phase], blind[phase])


def test_registration_error_is_zero_for_the_true_motion_and_shrinks_after_registration():
    case, _, motion = phantom.make_case_with_truth(5, "HCC", (16, 64, 64))
    identity = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in case.shape], indexing="ij"))
    assert registration.target_registration_error(case, identity, None).max() < 1e-4
    before = registration.target_registration_error(case, motion["art"], None)
    assert before.mean() > 3.0  # the phantom's breathing shifts 6-13 mm cranio-caudally
    rows = registration.measure_case(5, "HCC", (16, 64, 64), settings=FAST_REGISTRATION["registration"])
    by_region = {row["region"]: row for row in rows}
    assert set(by_region) == {"unregistered", *registration.REGIONS}
    assert by_region["unregistered"]["mean_mm"] == pytest.approx(float(before.mean()))
    assert by_region["whole image"]["mean_mm"] < 0.6 * before.mean()
