"""paresseg-predict: segment the liver tumors of one multi-phase CT study.

    paresseg-predict --pv PV --art ART --model MODEL --out mask.nii.gz \\
        [--liver_model LIVER_MODEL | --liver liver.nii.gz] [--prob prob.nii.gz] \\
        [--overlay overlay.png] [--gt tumor.nii.gz]

PV/ART: NIfTI (or MHA/NRRD) files or DICOM series folders. MODEL: a
``paresseg-train`` workdir or a saved model (also a converted PyTorch
checkpoint). Outputs are written in the PV image's geometry, all together at
the end, whole or not at all. Every input and output path is checked first,
then the models (spec against weights, phases against the images given),
before any image is read. Masks (--liver, --gt) must be on the PV grid
unless --resample_masks is given.
"""

import json

from absl import app, flags

from paresseg_jax import cli, preflight

_PV = flags.DEFINE_string("pv", None, "portal-venous image: file or DICOM series folder", required=True)
_ART = flags.DEFINE_string("art", None, "arterial image (file or DICOM folder); needed by two-phase models")
_MODEL = flags.DEFINE_string("model", None, "tumor model: paresseg-train workdir or saved-model folder", required=True)
_LIVER_MODEL = flags.DEFINE_string("liver_model", None, "liver model (single-phase PV ResSeg) whose dilated mask is the ROI")
_LIVER = flags.DEFINE_string("liver", None, "liver mask file to take the ROI from instead of a liver model")
_OUT = flags.DEFINE_string("out", None, "tumor mask to write (e.g. mask.nii.gz)", required=True)
_PROB = flags.DEFINE_string("prob", None, "also write the tumor probability map here")
_OVERLAY = flags.DEFINE_string("overlay", None, "also write a PNG montage of the slices with tumor here")
_GT = flags.DEFINE_string("gt", None, "ground-truth tumor mask: printed metrics, drawn in green on the overlay")
_MODE = flags.DEFINE_enum("mode", None, ["full", "tile"], "full slices (reference code) or overlap tiles (paper)")
_TILE = flags.DEFINE_integer("tile", None, "overlap-tile size in pixels")
_STRIDE = flags.DEFINE_integer("stride", None, "overlap-tile stride in pixels")
_WEIGHTING = flags.DEFINE_enum("weighting", None, ["pyramid", "gaussian", "constant"], "overlap-tile blending")
_TTA = flags.DEFINE_boolean("tta", None, "average over flipped inputs")
_THRESHOLD = flags.DEFINE_float("threshold", None, "tumor if probability > threshold")
_BATCH = flags.DEFINE_integer("batch_size", None, "slices or tiles per forward pass")
_CROP = flags.DEFINE_boolean("crop_to_roi", None, "with a ROI, compute only its bounding box (+ --roi_margin px)")
_MARGIN = flags.DEFINE_integer("roi_margin", None, "pixels of context kept around the ROI's bounding box")
_REGISTER = flags.DEFINE_boolean("register", None, "register ART to PV (default: as the model was trained)")
_RESAMPLE_MASKS = flags.DEFINE_boolean("resample_masks", False, "allow --liver/--gt masks on another grid than PV "
                                       "(resampled onto it; else refused)")

_SETTINGS = {"mode": _MODE, "tile": _TILE, "stride": _STRIDE, "weighting": _WEIGHTING, "tta": _TTA,
             "threshold": _THRESHOLD, "batch_size": _BATCH, "crop_to_roi": _CROP, "roi_margin": _MARGIN}


def main(argv):
    del argv
    if _LIVER.value and _LIVER_MODEL.value:
        raise app.UsageError("give --liver (a mask) or --liver_model, not both")
    paths = dict(phase_paths={"pv": _PV.value, "art": _ART.value}, model=_MODEL.value, out=_OUT.value,
                 liver_model=_LIVER_MODEL.value, liver=_LIVER.value, gt=_GT.value, prob_out=_PROB.value,
                 overlay_out=_OVERLAY.value)
    preflight.prediction(**paths)  # before importing jax: a wrong path fails at once
    from paresseg_jax.infer import study

    eval_config = {k: f.value for k, f in _SETTINGS.items() if f.value is not None}
    preprocess_config = None  # the training run's, or the defaults
    if _REGISTER.value is not None:
        trained = study.training_config(_MODEL.value) or {}
        preprocess_config = {**(trained.get("data", {}).get("preprocess") or {}), "register": _REGISTER.value}
    report = study.predict_files(**paths, eval_config=eval_config, preprocess_config=preprocess_config,
                                 resample_masks=_RESAMPLE_MASKS.value)
    print(json.dumps(report, indent=1, default=str))


def run():
    cli.run_app(main)


if __name__ == "__main__":
    run()
