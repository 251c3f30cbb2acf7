"""paresseg-predict: segment the liver tumors of multi-phase CT studies.

    # one study: a 0/1 tumor mask
    paresseg-predict --pv PV --art ART --model MODEL --out mask.nii.gz \\
        [--liver_model LIVER_MODEL | --liver liver.nii.gz] [--prob prob.nii.gz] \\
        [--overlay overlay.png] [--gt tumor.nii.gz] [--dicom_seg seg.dcm] [--lesions lesions.csv]
    # a cohort or folder of studies: DIR/<case_id>.nii.gz label maps (0 background, 1 liver, 2 tumor),
    # DIR/summary.json and DIR/lesions.csv (one row per lesion)
    paresseg-predict --input COHORT --output DIR --model MODEL [--liver_model LIVER_MODEL] [--save_probabilities] \\
        [--output_format dicom_seg]

A rerun of a folder skips the cases already finished (--overwrite: all again);
--num_parts N --part_id K splits a folder between N processes or machines.

PV/ART/--phase NAME=PATH: NIfTI (or MHA/NRRD) files or DICOM series folders,
one per phase the model uses (a model trained with phase dropout also runs
without ART: "absent_phases" in the printed report, and per case in a
folder's summary.json). MODEL: a ``paresseg-train`` workdir, a saved
model (also a converted PyTorch checkpoint) or a cross-validation workdir
(its fold_* models); --model repeated or a cross-validation workdir averages
the models' probabilities. COHORT: a manifest.json cohort, LiTS files, an
nnU-Net raw dataset or MSD Task03, or a folder of case folders holding
pv.nii.gz or a pv/ DICOM folder (and art, nc, dl, liver, tumor).
Outputs are written in the PV image's geometry, whole or not at all (one
study's all together at the end). Every input and output path is checked
first, then the models, before any image is read. Masks (--liver, --gt) must
be on the PV grid unless --resample_masks is given.
"""

import json

from absl import app, flags

from paresseg_jax import cli, flag_checks, names, preflight
from paresseg_jax.data import series_check
from paresseg_jax.data.layouts import PHASES, read_cohort
from paresseg_jax.errors import PareSegError

_PV = flags.DEFINE_string("pv", None, "portal-venous image: file or DICOM series folder")
_ART = flags.DEFINE_string("art", None, "arterial image (file or DICOM folder); needed by two-phase models unless "
                           "they were trained with phase dropout (then ART is given as absent, and the report says so)")
_PHASE = flags.DEFINE_multi_string("phase", [], f"NAME=PATH image of any phase the model uses ({', '.join(PHASES)})")
_MODEL = flags.DEFINE_multi_string("model", None, "tumor model: paresseg-train workdir, saved-model folder or "
                                   "cross-validation workdir; repeat for an ensemble", required=True)
_LIVER_MODEL = flags.DEFINE_multi_string("liver_model", [], "liver model (single-phase PV ResSeg) whose dilated mask "
                                         "is the ROI; repeat (or a cross-validation workdir) for an ensemble")
_LIVER = flags.DEFINE_string("liver", None, "liver mask file to take the ROI from instead of a liver model: 0/1, or "
                             "a multi-label map with --liver_label")
_LIVER_LABEL = flags.DEFINE_integer("liver_label", None, "--liver (or, with --input, every case's liver file) is a "
                                    "multi-label map whose voxels of this value are the liver (TotalSegmentator: 5)")
_OUT = flags.DEFINE_string("out", None, "one study: tumor mask to write (e.g. mask.nii.gz)")
_PROB = flags.DEFINE_string("prob", None, "one study: also write the tumor probability map here")
_OVERLAY = flags.DEFINE_string("overlay", None, "one study: also write a PNG montage of the slices with tumor here")
_GT = flags.DEFINE_string("gt", None, "one study: ground-truth tumor mask: printed metrics, drawn in green on the overlay")
_LESIONS = flags.DEFINE_string("lesions", None, "one study: also write the lesion table (volume, diameters, HU per "
                               "phase, centroid) as CSV here")
_INPUT = flags.DEFINE_string("input", None, "a cohort or folder of studies to segment (needs --output)")
_OUTPUT = flags.DEFINE_string("output", None, "folder for <case_id>.nii.gz label maps and summary.json (with --input)")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "with --input: predict every case again (by default a rerun "
                                  "skips the cases finished with the same models and settings whose outputs are intact)")
_NUM_PARTS = flags.DEFINE_integer("num_parts", 1, "with --input: split the cases into this many parts, one per "
                                  "process or machine writing into the same --output")
_PART_ID = flags.DEFINE_integer("part_id", 0, "with --input: which part (0 .. num_parts - 1) this process predicts")
_OVERLAYS = flags.DEFINE_boolean("overlays", False, "with --input: also write <case_id>_lesions.png, the largest "
                                 "lesions on PV and ART side by side, numbered as in lesions.csv")
_SAVE_PROB = flags.DEFINE_boolean("save_probabilities", False, "with --input: also write <case_id>_tumor_prob.nii.gz")
_FORMAT = flags.DEFINE_enum("output_format", "nifti", ["nifti", "dicom_seg"], "with --input: label maps as "
                            "<case_id>.nii.gz, or as <case_id>.dcm DICOM-SEGs (every PV a DICOM series folder)")
_DICOM_SEG = flags.DEFINE_string("dicom_seg", None, "one study: also write liver and tumor as a DICOM-SEG here "
                                 "(--pv must be a DICOM series folder; needs the .[dicom] extra)")
_MODE = flags.DEFINE_enum("mode", None, ["full", "tile"], "full slices (reference code) or overlap tiles (paper)")
_TILE = flags.DEFINE_integer("tile", None, "overlap-tile size in pixels")
_STRIDE = flags.DEFINE_integer("stride", None, "overlap-tile stride in pixels")
_WEIGHTING = flags.DEFINE_enum("weighting", None, ["pyramid", "gaussian", "constant"], "overlap-tile blending")
_TTA = flags.DEFINE_boolean("tta", None, "average over flipped inputs")
_THRESHOLD = flags.DEFINE_float("threshold", None, "tumor where probability >= threshold")
_BATCH = flags.DEFINE_integer("batch_size", None, "slices or tiles per forward pass")
_BATCH_PIXELS = flags.DEFINE_integer("batch_pixels", None, "at most this many pixels per forward pass (0: 512 x 512 "
                                     "on a CPU, which bounds host memory; no cap on GPUs)")
_CONV = flags.DEFINE_enum("conv_impl", None, ["direct", "fast"], "CPU convolutions: direct (default) or fast "
                          "(Winograd: ~12% less time, ~0.9 GB more memory per 512 x 512 slice at width 64)")
_CROP = flags.DEFINE_boolean("crop_to_roi", None, "with a ROI, compute only its bounding box (+ --roi_margin px): faster, "
                                 "but attention models' output changes (default: whole slices)")
_MARGIN = flags.DEFINE_integer("roi_margin", None, "pixels of context kept around the ROI's bounding box")
_LIVER_STEP = flags.DEFINE_integer("liver_slice_step", None, "with --liver_model: its coarse pass computes every k-th "
                                   "slice, then the slices around its liver (1: every slice)")
_LIVER_SCALE = flags.DEFINE_integer("liver_scale", None, "with --liver_model: it sees PV shrunk this many times "
                                    "in-plane (1: full resolution)")
_REGISTER = flags.DEFINE_boolean("register", None, "register the other phases to PV (default: as the model was trained)")
_ALLOW_GAPS = flags.DEFINE_boolean("allow_gaps", False, "resample a DICOM series with a missing slice onto even "
                                   "slices (with a warning) instead of refusing it")
_RENAME_UNSAFE = flags.DEFINE_boolean("rename_unsafe", False, "with --input: name the outputs of a case whose id "
                                     "cannot be a file name (a '/', '..', control characters, too long) after a "
                                     "safe version of it, with a warning (else the run is refused)")
_RESAMPLE_MASKS = flags.DEFINE_boolean("resample_masks", False, "allow --liver/--gt masks on another grid than PV "
                                       "(resampled onto it; else refused)")
_ALLOW_TRAINING = flags.DEFINE_boolean("allow_training_cases", False, "with --input: also score cases the model's "
                                       "run trained or validated on (its split.json; else refused)")

_SETTINGS = {"mode": _MODE, "tile": _TILE, "stride": _STRIDE, "weighting": _WEIGHTING, "tta": _TTA,
             "threshold": _THRESHOLD, "batch_size": _BATCH, "batch_pixels": _BATCH_PIXELS, "conv_impl": _CONV,
             "crop_to_roi": _CROP, "roi_margin": _MARGIN, "liver_slice_step": _LIVER_STEP, "liver_scale": _LIVER_SCALE}
_SINGLE_STUDY = {"pv": _PV, "art": _ART, "phase": _PHASE, "liver": _LIVER, "out": _OUT, "prob": _PROB,
                 "overlay": _OVERLAY, "gt": _GT, "dicom_seg": _DICOM_SEG, "lesions": _LESIONS}


def phase_paths() -> dict:
    """--pv, --art and every --phase NAME=PATH as one mapping."""
    paths = {"pv": _PV.value, "art": _ART.value}
    for spec in _PHASE.value:
        name, sep, path = spec.partition("=")
        name = name.strip().lower()
        if not sep or not path:
            raise app.UsageError(f"--phase {spec!r}: write NAME=PATH, e.g. --phase nc=study/nc.nii.gz")
        if name not in PHASES:
            raise app.UsageError(f"--phase {spec!r}: unknown phase {name!r}; phases are {', '.join(PHASES)}")
        if paths.get(name) is not None:
            raise app.UsageError(f"phase {name!r} is given twice")
        paths[name] = path
    return paths


def main(argv):
    del argv
    with series_check.gaps_allowed(_ALLOW_GAPS.value), names.renaming(_RENAME_UNSAFE.value):
        _predict()


def _predict():
    flag_checks.all_in_range({name: flag.value for name, flag in _SETTINGS.items()}, flag_checks.EVAL_RANGES)
    if _STRIDE.value is not None and _TILE.value is not None and _STRIDE.value > _TILE.value:
        flag_checks.in_range("stride", _STRIDE.value, 1, _TILE.value, meaning="tiles must meet or overlap")
    if _LIVER.value and _LIVER_MODEL.value:
        raise app.UsageError("give --liver (a mask) or --liver_model, not both")
    if _LIVER_LABEL.value is not None and not (_LIVER.value or _INPUT.value):
        raise app.UsageError("--liver_label names the liver's value in the --liver label map: give --liver too")
    if _INPUT.value is not None:
        given = [f"--{name}" for name, flag in _SINGLE_STUDY.items() if flag.value not in (None, [])]
        if not _OUTPUT.value or given:
            raise app.UsageError("--input segments a folder of studies into --output; "
                                 + (f"{', '.join(given)} are for one study" if given else "give --output"))
    elif not _PV.value or not (_OUT.value or _DICOM_SEG.value):
        raise app.UsageError("give --pv (and the model's other phases) and --out (or --dicom_seg) for one study, "
                             "or --input and --output for a folder of studies")
    single = dict(liver=_LIVER.value, gt=_GT.value, prob_out=_PROB.value, overlay_out=_OVERLAY.value,
                  dicom_seg_out=_DICOM_SEG.value, lesions_out=_LESIONS.value)
    if _INPUT.value is None:  # before importing jax: a wrong path fails at once
        preflight.prediction(phase_paths(), _MODEL.value, _OUT.value, liver_model=_LIVER_MODEL.value, **single)
    else:
        if _NUM_PARTS.value < 1 or not 0 <= _PART_ID.value < _NUM_PARTS.value:
            raise app.UsageError(f"--part_id {_PART_ID.value} of --num_parts {_NUM_PARTS.value}: give "
                                 "0 <= part_id < num_parts")
        read_cohort(preflight.existing(_INPUT.value, "the studies (--input)"))
        preflight.output_folder(_OUTPUT.value, "the output folder (--output)")
        preflight.models(_MODEL.value)
        preflight.models(_LIVER_MODEL.value, "the liver model folder")
    from paresseg_jax.infer import folder, study

    if _INPUT.value is not None:
        folder.check_run(_INPUT.value, _OUTPUT.value, _SAVE_PROB.value, _FORMAT.value)
    eval_config = {k: f.value for k, f in _SETTINGS.items() if f.value is not None}
    segmenter = study.Segmenter.load(_MODEL.value, _LIVER_MODEL.value or None, eval_config)
    if _REGISTER.value is not None:
        segmenter = segmenter.with_registration(_REGISTER.value)
    if _INPUT.value is not None:
        summary = folder.predict_folder(_INPUT.value, _OUTPUT.value, segmenter, save_probabilities=_SAVE_PROB.value,
                                        output_format=_FORMAT.value, resample_masks=_RESAMPLE_MASKS.value,
                                        liver_label=_LIVER_LABEL.value, overwrite=_OVERWRITE.value,
                                        num_parts=_NUM_PARTS.value, part_id=_PART_ID.value,
                                        overlays=_OVERLAYS.value, allow_training_cases=_ALLOW_TRAINING.value)
        _print_folder(summary, folder.case_line)
        return
    report = study.predict_files(phase_paths(), segmenter, _OUT.value, **single, resample_masks=_RESAMPLE_MASKS.value,
                                 liver_label=_LIVER_LABEL.value)
    print(json.dumps(report, indent=1, default=str))


def _print_folder(summary: dict, case_line) -> None:
    """A line per case, the overall scores, where the files are; a failed case ends the run with status 2."""
    for record in summary["cases"]:
        print(case_line(record))
    if summary["summary"] is not None:
        overall = summary["summary"]["all"]
        print(f"tumor DPC {100 * overall['dpc']:.2f}%  DG {100 * overall['dg']:.2f}%  over {overall['n_cases']} "
              "scored cases")
    failed = [r["case_id"] for r in summary["cases"] if "failed" in r]
    print(f"{len(summary['cases']) - len(failed)} of {summary['info']['cases_in_input']} cases finished "
          f"({len(summary['info']['predicted_now'])} predicted now): label maps, summary.json, lesions.csv, report.md "
          f"in {_OUTPUT.value}")
    if failed:
        raise PareSegError(f"{len(failed)} of {len(summary['cases'])} cases failed ({', '.join(failed)}; the "
                           "reasons are above and in summary.json)", path=_OUTPUT.value,
                           fix="repair those cases' images and segment them again")


def run():
    cli.run_app(main)


if __name__ == "__main__":
    run()
