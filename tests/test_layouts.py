"""nnU-Net raw datasets and MSD Task03_Liver folders, written by the tests, read through read_cohort."""

import json

import numpy as np
import pytest

from paresseg_jax.data.case import read_case
from paresseg_jax.data.images import write_image
from paresseg_jax.data.layouts import read_cohort
from paresseg_jax.errors import PareSegError

SHAPE = (6, 16, 20)
GEOMETRY = {"spacing": (0.8, 0.8, 2.5), "origin": (-5.0, 3.0, 10.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}


def _labels(seed: int) -> np.ndarray:
    """0 background, 1 liver, 2 tumor (LiTS / MSD convention), a different box per case."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:5, 2 + seed:12, 3:15] = 1
    labels[2:4, 5:8, 6 + seed:10 + seed] = 2
    return labels


def _image(value: float, seed: int) -> np.ndarray:
    return (value + np.random.default_rng(seed).normal(0, 10, SHAPE)).astype(np.float32)


def _nnunet(root, channel_names, labels, *, cases=("liver_007", "liver_012"), test_cases=("liver_200",)):
    """An nnU-Net v2 raw dataset: channel c of case X is imagesTr/X_000c.nii.gz with HU level 100 * (c + 1)."""
    (root / "dataset.json").parent.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": channel_names, "labels": labels,
                                                   "numTraining": len(cases), "file_ending": ".nii.gz"}))
    for split, names in (("imagesTr", cases), ("imagesTs", test_cases)):
        for seed, case in enumerate(names):
            for channel in channel_names:
                write_image(_image(100 * (int(channel) + 1), seed), GEOMETRY,
                               root / split / f"{case}_{int(channel):04d}.nii.gz")
            if split == "imagesTr":
                write_image(_labels(seed), GEOMETRY, root / "labelsTr" / f"{case}.nii.gz")
    return root


def test_nnunet_channels_become_phases_by_name_and_labels_liver_and_tumor(tmp_path):
    # channel 0 is arterial: the phase comes from the name, not the position
    root = _nnunet(tmp_path / "Dataset042_LiverMP", {"0": "Arterial", "1": "portal-venous"},
                   {"background": 0, "liver": 1, "tumor": 2})
    entries = read_cohort(root)
    assert [e.case_id for e in entries] == ["liver_007", "liver_012"]
    for seed, entry in enumerate(entries):
        case = read_case(entry)
        np.testing.assert_allclose(case.phases["pv"], _image(200, seed), atol=1e-4)
        np.testing.assert_allclose(case.phases["art"], _image(100, seed), atol=1e-4)
        np.testing.assert_array_equal(case.liver, _labels(seed) >= 1)  # the liver mask covers its tumors
        np.testing.assert_array_equal(case.tumor, _labels(seed) == 2)
        np.testing.assert_allclose(case.spacing, GEOMETRY["spacing"])


def test_nnunet_images_ts_is_unlabelled_prediction_input(tmp_path):
    root = _nnunet(tmp_path / "Dataset042_LiverMP", {"0": "PV", "1": "ART"}, {"background": 0, "liver": 1, "tumor": 2})
    (entry,) = read_cohort(root / "imagesTs")
    assert entry.case_id == "liver_200" and entry.segmentation is None
    case = read_case(entry)
    assert case.liver is None and case.tumor is None
    np.testing.assert_allclose(case.phases["art"], _image(200, 0), atol=1e-4)


def test_nnunet_region_labels(tmp_path):
    root = _nnunet(tmp_path / "Dataset043", {"0": "venous"}, {"background": 0, "liver": [1, 2], "lesion": 2})
    case = read_case(read_cohort(root)[1])
    np.testing.assert_array_equal(case.liver, _labels(1) >= 1)
    np.testing.assert_array_equal(case.tumor, _labels(1) == 2)


def test_channels_the_names_do_not_decide_need_an_explicit_mapping(tmp_path):
    root = _nnunet(tmp_path / "Dataset044", {"0": "CT_a", "1": "CT_b"}, {"background": 0, "liver": 1, "tumor": 2})
    with pytest.raises(PareSegError, match="channel_phases"):
        read_cohort(root)
    entries = read_cohort(root, channel_phases={"CT_a": "art", "1": "pv"})  # by name or by index
    case = read_case(entries[0])
    np.testing.assert_allclose(case.phases["pv"], _image(200, 0), atol=1e-4)
    np.testing.assert_allclose(case.phases["art"], _image(100, 0), atol=1e-4)


def test_label_neither_liver_nor_tumor_is_an_error_naming_it(tmp_path):
    root = _nnunet(tmp_path / "Dataset045", {"0": "PV"}, {"background": 0, "liver": 1, "vessel": 2})
    with pytest.raises(PareSegError, match="'vessel'"):
        read_cohort(root)


def test_msd_task03_liver_is_a_single_phase_cohort_with_labels_0_1_2(tmp_path):
    root = tmp_path / "Task03_Liver"
    for seed, number in enumerate((0, 1000)):  # liver_1000 is a case, not channel 1000 of case "liver"
        write_image(_image(80, seed), GEOMETRY, root / "imagesTr" / f"liver_{number}.nii.gz")
        write_image(_labels(seed), GEOMETRY, root / "labelsTr" / f"liver_{number}.nii.gz")
    (root / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\0\5\26\7")  # macOS metadata shipped in the MSD archive
    write_image(_image(80, 9), GEOMETRY, root / "imagesTs" / "liver_140.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": f"./imagesTr/liver_{n}.nii.gz", "label": f"./labelsTr/liver_{n}.nii.gz"} for n in (0, 1000)],
        "test": ["./imagesTs/liver_140.nii.gz"]}))
    entries = read_cohort(root)
    assert [e.case_id for e in entries] == ["liver_0", "liver_1000"]
    case = read_case(entries[1])
    assert list(case.phases) == ["pv"]
    np.testing.assert_allclose(case.phases["pv"], _image(80, 1), atol=1e-4)
    np.testing.assert_array_equal(case.liver, _labels(1) >= 1)
    np.testing.assert_array_equal(case.tumor, _labels(1) == 2)
    assert [e.case_id for e in read_cohort(root / "imagesTs")] == ["liver_140"]
