"""Synthetic cohort: reproducible, per-type contrasts of phantom.HU, misaligned ART, balanced cohort."""

import json

import numpy as np
import pytest
from scipy import ndimage

from paresseg_jax.data import phantom
from paresseg_jax.data.case import read_case
from paresseg_jax.data.layouts import read_cohort

SHAPE = (16, 64, 64)
SEEDS = (0, 1, 2)


def _contrast(case, masks, phase):
    """Mean tumor HU minus median liver parenchyma HU, where this phase shows them.

    The tumor rim is left out (per-slice 1-voxel erosion): partial-volume blur
    mixes it with liver, and phantom.HU gives the lesion's own attenuation.
    """
    tumor = masks[phase]["tumor"] > 0
    core = ndimage.binary_erosion(tumor, np.ones((1, 3, 3), bool))
    parenchyma = (masks[phase]["liver"] > 0) & ~ndimage.binary_dilation(tumor, iterations=2)
    image = case.phases[phase].astype(np.float64)
    return image[core].mean() - np.median(image[parenchyma])


@pytest.fixture(scope="module")
def contrasts():
    table = {}
    for tumor_type in phantom.TUMOR_TYPES:
        for seed in SEEDS:
            case, masks = phantom.make_case_with_phase_masks(seed, tumor_type, SHAPE, phases=("pv", "art", "nc", "dl"))
            table[tumor_type, seed] = {p: _contrast(case, masks, p) for p in case.phases}
    return table


def test_same_seed_same_case_other_seed_other_case():
    a = phantom.make_case(7, "HCC", SHAPE)
    b = phantom.make_case(7, "HCC", SHAPE)
    c = phantom.make_case(8, "HCC", SHAPE)
    for p in a.phases:
        np.testing.assert_array_equal(a.phases[p], b.phases[p])
    np.testing.assert_array_equal(a.tumor, b.tumor)
    assert a.metadata == b.metadata
    assert not np.array_equal(a.phases["pv"], c.phases["pv"])


def test_case_structure_and_ground_truth_in_pv_geometry():
    case = phantom.make_case(3, "METs", SHAPE, spacing=(5.0, 4.0, 4.0), scanner="scanner_5mm")
    assert list(case.phases) == ["pv", "art"] and case.shape == SHAPE
    assert case.spacing == (4.0, 4.0, 5.0) and case.spacing_zyx == (5.0, 4.0, 4.0)
    assert all(a.dtype == np.float32 for a in case.phases.values())
    assert case.liver.dtype == np.uint8 and set(np.unique(case.tumor)) == {0, 1}
    assert np.all(case.liver[case.tumor > 0] == 1), "tumors lie inside the liver mask"
    assert 1 <= case.metadata["num_lesions"] <= 3
    assert case.metadata["tumor_type"] == "METs" and case.metadata["scanner"] == "scanner_5mm"


def test_cysts_are_dark_in_every_phase(contrasts):
    for seed in SEEDS:
        for phase, value in contrasts["Cyst", seed].items():
            assert value < -30, (seed, phase, value)


def test_fnh_is_iso_in_pv_and_bright_in_art(contrasts):
    for seed in SEEDS:
        c = contrasts["FNH", seed]
        assert abs(c["pv"]) < 10, c
        assert c["art"] > 40, c


def test_hcc_is_bright_in_art_and_washes_out_in_pv(contrasts):
    for seed in SEEDS:
        c = contrasts["HCC", seed]
        assert c["art"] > 15 and c["pv"] < -10, c


def test_metastases_are_dark_in_pv(contrasts):
    for seed in SEEDS:
        assert contrasts["METs", seed]["pv"] < -15, contrasts["METs", seed]


def test_hemangioma_fills_in_centripetally_in_pv():
    case, masks = phantom.make_case_with_phase_masks(4, "HEM", (16, 96, 96))
    tumor = masks["pv"]["tumor"] > 0
    depth = ndimage.distance_transform_edt(tumor, sampling=case.spacing_zyx)
    pv = case.phases["pv"]
    rim, center = pv[tumor & (depth <= np.percentile(depth[tumor], 50))], pv[depth >= np.percentile(depth[tumor], 90)]
    assert rim.mean() > center.mean() + 10  # bright rim, darker center in PV


def test_art_is_misaligned_with_pv_before_registration():
    for seed in SEEDS:
        case, masks = phantom.make_case_with_phase_masks(seed, "HCC", SHAPE)
        pv, art = case.liver > 0, masks["art"]["liver"] > 0
        dice = 2 * (pv & art).sum() / (pv.sum() + art.sum())
        assert 0.6 < dice < 0.93, dice
        np.testing.assert_array_equal(masks["pv"]["liver"], case.liver)


def test_scanner_profiles_set_slice_thickness_and_noise():
    for scanner, profile in phantom.SCANNERS.items():
        case = phantom.make_case(5, "Cyst", SHAPE, scanner=scanner)
        assert case.spacing[2] == profile["slice_mm"]
        air = case.phases["pv"][:, :4, :4]  # corner outside the body: air plus noise only
        assert profile["noise_hu"][0] * 0.8 < air.std() < profile["noise_hu"][1] * 1.2
        assert abs(air.mean() + 1000) < 5


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="tumor_type 'XYZ'"):
        phantom.make_case(0, "XYZ", SHAPE)
    with pytest.raises(ValueError, match="scanner"):
        phantom.make_case(0, "HCC", SHAPE, scanner="nope")
    with pytest.raises(ValueError, match="shape"):
        phantom.make_case(0, "HCC", (2, 8, 8))


def test_make_cohort_is_balanced_and_readable(tmp_path):
    phantom.make_cohort(tmp_path, 10, seed=1, shape=(8, 32, 32), progress=False)
    records = json.loads((tmp_path / "manifest.json").read_text())["cases"]
    assert sorted(r["tumor_type"] for r in records) == sorted(phantom.TUMOR_TYPES * 2)
    for tumor_type in phantom.TUMOR_TYPES:
        assert sorted(r["scanner"] for r in records if r["tumor_type"] == tumor_type) == sorted(phantom.SCANNERS)
    assert {r["split"] for r in records} == {f"fold-{k}" for k in range(5)}
    entries = read_cohort(tmp_path)
    assert [e.case_id for e in entries] == [f"case_{i:04d}" for i in range(10)]
    case = read_case(entries[3])
    assert case.metadata["tumor_type"] == records[3]["tumor_type"] and case.shape == (8, 32, 32)
    regenerated = phantom.make_case(records[3]["seed"], records[3]["tumor_type"], (8, 32, 32), scanner=records[3]["scanner"])
    np.testing.assert_allclose(case.phases["pv"], regenerated.phases["pv"])
    np.testing.assert_array_equal(case.tumor, regenerated.tumor)
