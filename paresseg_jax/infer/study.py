"""Segment studies: files (NIfTI/MHA/NRRD or DICOM series folders) or SimpleITK images in, PV geometry out.

A study is prepared as training prepared its cases (``paresseg_jax.data``):
other phases resampled onto the PV grid and registered to PV, every phase
windowed to [0, 1]. When the model comes from a ``paresseg-train`` workdir,
that run's preprocessing and ``eval`` settings are used, so a model is always
fed what it was trained on; explicit arguments override them. A
:class:`Segmenter` holds the models, loaded once, and those settings;
:func:`predict_files` and :func:`segment` run it on one study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from paresseg_jax import absent_phases, lesions, model_io, preflight, stage_times
from paresseg_jax.atomic import atomic_path
from paresseg_jax.data import preprocess
from paresseg_jax.data.cache import bounding_box
from paresseg_jax.data.case import Case, read_case
from paresseg_jax.data.images import write_image
from paresseg_jax.data.layouts import CaseEntry
from paresseg_jax.errors import BadInputError
from paresseg_jax.infer import dicom_seg
from paresseg_jax.infer.cascade import (postprocessed, predict_options, predicted_liver, segment_options,
                                       segment_study, stored_postprocessing)
from paresseg_jax.infer.ensemble import Ensemble, as_ensemble, load_ensemble
from paresseg_jax.infer.liver_stage import model_shape, stage_options
from paresseg_jax.infer.overlay import overlay_montage
from paresseg_jax.metrics import case_metrics
from paresseg_jax.workdir import read_config

ModelSource = str | os.PathLike | Sequence[str | os.PathLike] | Ensemble | tuple


def training_config(model_path: str | os.PathLike) -> dict | None:
    """The config of the training run that exported a saved model, or None (e.g. a converted checkpoint)."""
    model_dir = model_io.resolve_model_dir(model_path)
    for folder in (model_dir, model_dir.parent):
        config = read_config(folder)
        if config is not None:
            return config
    return None


def phase_flag(name: str) -> str:
    """How ``paresseg-predict`` takes a phase's image: the short forms --pv/--art, else --phase NAME=PATH."""
    return f"--{name}" if name in ("pv", "art") else f"--phase {name}=PATH"


@dataclasses.dataclass
class Segmenter:
    """The tumor model(s), the optional liver model(s) and the settings they run with, loaded once.

    ``options``: keyword arguments of :func:`segment_study` (threshold,
    mode, tta, ...); ``preprocess_config``: resolved preprocessing settings;
    ``postprocessing``: the settings ``paresseg-postprocess`` stored beside
    the first tumor model (``paresseg_jax.postprocess``), None for none.
    """

    tumor: Ensemble
    liver: Ensemble | None
    options: dict
    preprocess_config: dict
    postprocessing: dict | None = None

    @classmethod
    def load(
        cls,
        model: ModelSource,
        liver_model: ModelSource | None = None,
        eval_config: Mapping | None = None,
        preprocess_config: Mapping | None = None,
    ) -> "Segmenter":
        """Models from paths (saved models, training or cross-validation workdirs; a list is an ensemble) or
        loaded ones; settings from the first tumor model's training run, overridden by the arguments."""
        tumor = _ensemble(model)
        trained = training_config(tumor.sources[0]) if tumor.sources else None
        settings = {**(trained["eval"] if trained else {}), **dict(eval_config or {})}
        if preprocess_config is None and trained:
            preprocess_config = trained["data"]["preprocess"]
        liver = None if liver_model is None else _ensemble(liver_model)
        chosen = stored_postprocessing(tumor.sources[0]) if tumor.sources else None
        return cls(tumor, liver, segment_options(settings), preprocess.resolve_config(preprocess_config), chosen)

    @property
    def phases(self) -> tuple[str, ...]:
        return self.tumor.phases

    def with_registration(self, register: bool) -> "Segmenter":
        """The same models and settings, registering the other phases to PV or not."""
        return dataclasses.replace(self, preprocess_config={**self.preprocess_config, "register": bool(register)})

    def missing_phases(self, given) -> list[str]:
        return [p for p in self.phases if p not in given]

    def absent_phases_of(self, given, model: str | os.PathLike | None = None) -> list[str]:
        """:meth:`missing_phases`, which the models then see as absent; refused (``BadInputError``) unless
        every tumor model was trained with phase dropout (``paresseg_jax.absent_phases``)."""
        spec = {absent_phases.SPEC_KEY: self.tumor.phase_dropout}
        return absent_phases.missing_phases(given, self.phases, spec, model, flag=phase_flag)

    def segment_case(self, case: Case, liver: np.ndarray | None = None, progress=None,
                     sources: Mapping | None = None, whole_phases: bool = False) -> tuple[dict, dict, dict]:
        """``(segment_study result, windowed images, registration report)`` of a case in HU, with the stored
        postprocessing applied; the result also holds ``phases_hu``, the phases in HU as registered to PV.

        ``liver``: a liver mask to take the ROI from; without one the liver
        model (if any) predicts it from PV before the other phases are
        resampled, and then only in the ROI's box, all the tumor model reads
        (``preprocess.resampled_phases``); ``whole_phases`` resamples them
        whole (for overlays that show them). ``sources`` name the phases'
        files in errors.
        """
        options, dilation = predict_options(self.options), self.preprocess_config["roi_dilation"]
        first = self.liver if liver is None and self.liver is not None else self.tumor  # the model run first
        known_roi = None if liver is None else preprocess.liver_roi(liver, dilation)
        # its forward passes compile on the idle core while registration runs on one
        liver_stage = stage_options(self.options)
        shape = case.shape if first is self.tumor else model_shape(case.shape, liver_stage.get("liver_scale", 1))
        with stage_times.beside("compilation", first.plans, shape, known_roi, **options) as plans:
            transforms, registration = preprocess.phase_transforms(case, self.preprocess_config, sources)
        roi_liver, tumor_plans = liver, None
        if first is self.tumor:
            tumor_plans = plans()
        else:
            with stage_times.stage("windowing"):
                pv = preprocess.windowed({"pv": case.phases["pv"]}, self.preprocess_config)["pv"]
            report = None if progress is None else (lambda done, total: progress("liver", done, total))
            roi_liver = predicted_liver(pv, self.liver, self.options["liver_threshold"], report, plans(), **liver_stage,
                                        **options)
        roi = None if roi_liver is None or whole_phases else preprocess.liver_roi(roi_liver, dilation)
        registered = preprocess.resampled_phases(case, transforms, None if roi is None else bounding_box(roi > 0))
        with stage_times.stage("windowing"):
            images = absent_phases.fill_absent(preprocess.windowed(registered, self.preprocess_config), self.phases)
        result = segment_study(images, self.tumor, liver=roi_liver, roi_dilation=dilation, progress=progress,
                               tumor_plans=tumor_plans, **self.options)
        if self.postprocessing:
            with stage_times.stage("postprocessing"):
                result = postprocessed(result, case.spacing_zyx, self.postprocessing, liver_predicted=liver is None)
        result["phases_hu"] = registered  # what the lesions are measured on (inside the ROI)
        return result, images, registration


def _ensemble(model: ModelSource) -> Ensemble:
    """Loaded models as they are (an ensemble, or one ``(module, variables)`` pair), paths loaded."""
    if isinstance(model, Ensemble) or (isinstance(model, tuple) and model and hasattr(model[0], "phases")):
        return as_ensemble(model)
    return load_ensemble(model)


def read_files(
    phase_paths: Mapping[str, str | os.PathLike],
    *,
    liver: str | os.PathLike | None = None,
    tumor: str | os.PathLike | None = None,
    case_id: str = "study",
    resample_masks: bool = False,
    liver_label: int | None = None,
) -> Case:
    """A study's case in HU on the PV grid: ``phase_paths`` maps phase names ('pv' required) to image files
    or DICOM folders; ``liver`` and ``tumor`` are optional 0/1 masks on the PV grid (on another grid only
    with ``resample_masks``: resampled onto it); ``liver_label``: ``liver`` is a multi-label map, the liver
    being this value."""
    if "pv" not in phase_paths or phase_paths["pv"] is None:
        raise BadInputError("a study needs its PV image (--pv): PV is the target phase")
    entry = CaseEntry(
        case_id,
        {name: Path(path) for name, path in phase_paths.items()},
        liver=None if liver is None else Path(liver),
        tumor=None if tumor is None else Path(tumor),
        resample_masks=resample_masks,
        liver_label=liver_label,
    )
    return read_case(entry)


def read_study(
    phase_paths: Mapping[str, str | os.PathLike],
    *,
    liver: str | os.PathLike | None = None,
    tumor: str | os.PathLike | None = None,
    preprocess_config: Mapping | None = None,
    case_id: str = "study",
    resample_masks: bool = False,
) -> tuple[Case, dict[str, np.ndarray], dict]:
    """``(case in HU, windowed images, registration report)`` of one study (see :func:`read_files`)."""
    case = read_files(phase_paths, liver=liver, tumor=tumor, case_id=case_id, resample_masks=resample_masks)
    images, report = preprocess.prepare_phases(case, preprocess_config, phase_paths)
    return case, images, report


def predict_files(
    phase_paths: Mapping[str, str | os.PathLike | None],
    model: ModelSource | Segmenter,
    out: str | os.PathLike | None,
    *,
    liver_model: ModelSource | None = None,
    liver: str | os.PathLike | None = None,
    gt: str | os.PathLike | None = None,
    prob_out: str | os.PathLike | None = None,
    overlay_out: str | os.PathLike | None = None,
    dicom_seg_out: str | os.PathLike | None = None,
    lesions_out: str | os.PathLike | None = None,
    eval_config: Mapping | None = None,
    preprocess_config: Mapping | None = None,
    resample_masks: bool = False,
    liver_label: int | None = None,
) -> dict:
    """Segment one study and write the tumor mask (and optionally probability, overlay, DICOM-SEG) in PV geometry.

    ``model`` / ``liver_model``: a saved model, a ``paresseg-train`` workdir,
    a cross-validation workdir or a list of them (an ensemble), or a loaded
    :class:`Segmenter`. ``liver``: a liver mask file to take the ROI from
    instead of a liver model, or a multi-label map whose ``liver_label``
    voxels are the liver (TotalSegmentator: 5). ``gt``: a tumor mask to score against and draw
    in green. ``resample_masks``: allow masks on another grid than PV (else
    refused). ``dicom_seg_out``: the liver and tumor as a DICOM-SEG
    referencing the PV series (PV must be a DICOM series folder).
    ``lesions_out``: the lesion table as CSV (``paresseg_jax.lesions``). Every path
    and the models are checked before any image is read, and the outputs are
    written together at the end, whole or not at all. ``eval_config`` (keys
    of a config's ``eval`` section) and ``preprocess_config`` override the
    training run's settings; what neither sets takes the library defaults
    (those of ``paresseg_jax.config_defaults``). A phase left out (``None``)
    is given to the model as absent (zeros) if it was trained with phase
    dropout, else refused. Returns a report: paths written, tumor volume
    (ml), lesions, registration, the phases given as absent, metrics, and
    ``stage_times`` (``paresseg_jax.stage_times``: where the time went).
    """
    loaded = isinstance(model, Segmenter)
    preflight.prediction(phase_paths, None if loaded else model, out, liver_model=liver_model, liver=liver, gt=gt,
                         prob_out=prob_out, overlay_out=overlay_out, dicom_seg_out=dicom_seg_out,
                         lesions_out=lesions_out)
    if dicom_seg_out is not None and phase_paths.get("pv") is not None:
        check_dicom_series(phase_paths["pv"], "a DICOM-SEG output (--dicom_seg)")
    segmenter = model if loaded else Segmenter.load(model, liver_model, eval_config, preprocess_config)
    given = {name: path for name, path in phase_paths.items() if path is not None}
    absent = _absent_phases(segmenter, given)
    with stage_times.recording() as times:
        with stage_times.stage("reading"):
            case = read_files(given, liver=liver, tumor=gt, resample_masks=resample_masks, liver_label=liver_label)
        result, images, registration = segmenter.segment_case(case, liver=case.liver, sources=given)
        with stage_times.stage("measuring"):
            report = {"registration": registration, "absent_phases": absent,
                      "postprocessing": segmenter.postprocessing, **_measured(result, case, liver is not None)}
        paths = {"mask": out, "prob": prob_out, "lesions_csv": lesions_out, "dicom_seg": dicom_seg_out,
                 "overlay": overlay_out}
        with stage_times.stage("writing"):
            _write_outputs(report, result, images, case, given, paths)
    report["stage_times"] = times.record()
    return report


def roi_source(result: Mapping, liver_given: bool) -> str:
    """Where a study's ROI came from, as reports name it: a given liver mask, the liver model, or none."""
    return "none" if result["roi"] is None else ("liver mask" if liver_given else "liver model")


def _measured(result: dict, case: Case, liver_given: bool) -> dict:
    """A study's volumes, lesions, ROI source and (with a tumor mask) metrics, for its report."""
    measured = {**volumes_ml(result, case), "lesions": study_lesions(result, case)}
    measured["roi"] = roi_source(result, liver_given)
    if case.tumor is not None:
        measured["metrics"] = case_metrics(result["mask"], case.tumor, case.spacing_zyx)
    return measured


def _absent_phases(segmenter: Segmenter, given: Mapping[str, str | os.PathLike]) -> list[str]:
    """The model's phases not given (refused unless it was trained with phase dropout); a given phase the model
    does not use is refused."""
    named = segmenter.tumor.sources[0] if segmenter.tumor.sources else None
    absent = segmenter.absent_phases_of(given, named)
    unused = [p for p in given if p not in segmenter.phases]
    if unused:
        raise BadInputError(f"the model uses phases {segmenter.phases}, not {unused}", path=named,
                            fix=f"leave out {', '.join(phase_flag(p) for p in unused)} or use a model trained on them")
    return absent


def _write_outputs(report: dict, result: dict, images: Mapping, case: Case, given: Mapping, paths: Mapping) -> None:
    """Each output of ``paths`` (report key -> path or None) written, all together or none (``atomic_path``);
    ``report`` gains the path of each."""
    with contextlib.ExitStack() as outputs:
        def target(key: str) -> Path:
            report[key] = str(paths[key])
            return outputs.enter_context(atomic_path(paths[key]))

        if paths["mask"] is not None:
            write_image(result["mask"], case, target("mask"))
        if paths["prob"] is not None:
            write_image(result["prob"], case, target("prob"))
        if paths["lesions_csv"] is not None:
            lesions.write_csv(target("lesions_csv"), lesions.csv_rows(case.case_id, report["lesions"]["lesions"]))
        if paths["dicom_seg"] is not None:
            write_dicom_seg(result["labels"], case, given["pv"], target("dicom_seg"))
        if paths["overlay"] is not None:
            drawn = ", ground truth (green)" if case.tumor is not None else ""
            overlay_montage(images["pv"], result["mask"], target("overlay"), gt=case.tumor, spacing_zyx=case.spacing_zyx,
                            title=f"{Path(given['pv']).name}: prediction (red){drawn}")


def volumes_ml(result: Mapping, case: Case) -> dict:
    """Tumor voxels and millilitres, and the liver's millilitres when a liver mask was used or predicted."""
    voxel_ml = float(np.prod(case.spacing)) / 1000.0
    volumes = {"tumor_voxels": int(result["mask"].sum())}
    volumes["tumor_ml"] = volumes["tumor_voxels"] * voxel_ml
    if result["liver"] is not None:
        volumes["liver_ml"] = int(result["liver"].sum()) * voxel_ml
    return volumes


def study_lesions(result: Mapping, case: Case) -> dict:
    """The lesions of a :meth:`Segmenter.segment_case` result: measured in HU on the registered phases."""
    return lesions.study_lesions(result["mask"], result["liver"], case, phases_hu=result["phases_hu"],
                                 prob=result["prob"])


def check_dicom_series(pv: str | os.PathLike, purpose: str, metadata: Mapping | None = None) -> Path:
    """The DICOM folder a SEG references: PV's own, or for a case of ``paresseg-import-dicom`` the PV series'
    source folder its manifest recorded (``metadata['series']['pv']['folders']``). Refused before any work
    when there is none, or when its headers lack what the SEG must carry."""
    folders = [Path(pv)] if Path(pv).is_dir() else [
        Path(f) for f in ((metadata or {}).get("series") or {}).get("pv", {}).get("folders", [])]
    if len(folders) != 1 or not folders[0].is_dir():
        recorded = f" (its import recorded {[str(f) for f in folders]})" if folders else ""
        raise BadInputError(f"{purpose} needs the PV image as a DICOM series folder, not a file{recorded}", path=pv,
                            fix="give the PV series' DICOM folder (or, for an imported cohort, keep the DICOM files "
                            "where they were imported from), or write NIfTI instead")
    dicom_seg.source_headers(folders[0])
    return folders[0]


def write_dicom_seg(labels: np.ndarray, case: Case, pv_series: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A LiTS label map on the case's PV grid as a DICOM-SEG referencing the PV series it was computed on."""
    return dicom_seg.write_dicom_seg(case.geometry.apply_to(sitk.GetImageFromArray(labels)), pv_series, path)


def segment(
    phases: Mapping[str, sitk.Image | str | os.PathLike],
    model: ModelSource | Segmenter,
    liver_model: ModelSource | None = None,
    *,
    liver: sitk.Image | str | os.PathLike | None = None,
    register: bool | None = None,
    resample_masks: bool = False,
    liver_label: int | None = None,
    **options: Any,
) -> sitk.Image:
    """The LiTS label map (uint8: 0 background, 1 liver, 2 tumor) of one study, in PV geometry.

    For notebooks: ``phases`` maps phase names ('pv' required) to SimpleITK
    images in HU or to files/DICOM folders; other phases are resampled onto
    PV and registered to it (``register``: default as the model was trained),
    then windowed. ``model``/``liver_model`` as for :func:`predict_files`; pass
    a :class:`Segmenter` to load the models once for many studies. ``liver``:
    a 0/1 liver mask (image or file) on the PV grid (another grid only with
    ``resample_masks``) to take the ROI from, or a multi-label map whose
    ``liver_label`` voxels are the liver. ``options`` are
    ``eval`` settings (threshold, mode, tta, batch_size, ...). Liver is 1 only
    where a liver mask was given or predicted.
    """
    if isinstance(model, Segmenter):
        if liver_model is not None or options:
            raise ValueError("a Segmenter carries its liver model and settings; pass them to Segmenter.load")
        segmenter = model
    else:
        segmenter = Segmenter.load(model, liver_model, options)
    if register is not None:
        segmenter = segmenter.with_registration(register)
    segmenter.absent_phases_of(phases)  # refuses missing phases unless the model was trained with phase dropout
    used = [p for p in segmenter.phases if p in phases]
    sources = {p: phases[p] if not isinstance(phases[p], sitk.Image) else f"the {p} image" for p in used}
    case = read_case(CaseEntry("study", {p: phases[p] for p in dict.fromkeys(("pv", *used))}, liver=liver,
                               resample_masks=resample_masks, liver_label=liver_label))
    result, _, _ = segmenter.segment_case(case, liver=case.liver, sources=sources)
    return case.geometry.apply_to(sitk.GetImageFromArray(result["labels"]))
