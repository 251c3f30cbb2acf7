"""paresseg-evaluate: the paper's tables (and figures) from predictions, workdirs or a cross-validation.

    # k-fold cross-validation (trains every fold and its liver-ResSeg, then scores the held-out cases)
    paresseg-evaluate --config=paresseg --workdir=runs/cv_paresseg --liver_workdir=runs/cv_liver
    # tables of finished runs, with a paired t-test of each run against the first
    paresseg-evaluate --run single=runs/cv_single --run paresseg=runs/cv_paresseg --figures=report/
    # a folder of predicted masks <case_id>.nii.gz against a cohort's ground truth
    paresseg-evaluate --predictions=preds/ --cohort=data/cohort
    # paresseg-predict's label maps (an ensemble's too): its summary.json is a run, or score the folder again
    paresseg-evaluate --run ensemble=preds/ --run single=other_preds/

A run is a summary.json, a folder holding one, or a paresseg-train workdir:
then its model (config.eval.checkpoint: 'last' by default) is scored first on
its test cases (split.json), through the paper's cascade: --liver_workdir is a
liver-ResSeg run trained on the same folds (--roi=oracle_gt_liver uses the
ground-truth liver instead, an oracle). Every summary states its split,
checkpoint, ROI, extent and threshold. Every path is
checked before any work; predicted masks must be on their case's PV grid
unless --resample_masks is given.
"""

from pathlib import Path

from absl import app, flags

from paresseg_jax import cli, flag_checks, preflight

_CONFIG = cli.define_config_flag("experiment config (built-in name or file path): run its k-fold cross-validation")
_WORKDIR = flags.DEFINE_string("workdir", None, "cross-validation workdir (fold_k/ subfolders, summary.json)")
_FOLDS = flags.DEFINE_list("folds", None, "only these folds (default: all config.data.num_folds)")
_RUNS = flags.DEFINE_multi_string("run", [], "NAME=PATH of a finished run (summary.json, its folder, or a workdir)")
_PREDICTIONS = flags.DEFINE_string("predictions", None, "folder of predicted tumor masks or label maps "
                                   "<case_id>.nii.gz to score")
_TUMOR_LABEL = flags.DEFINE_integer("tumor_label", None, "label of tumor in the --predictions (default: the one "
                                    "paresseg-predict's summary.json there names, 2; else 1, a 0/1 tumor mask)")
_COHORT = flags.DEFINE_string("cohort", None, "cohort with the ground truth for --predictions")
_METRIC = flags.DEFINE_string("metric", "dice", "per-case metric of the paired t-test")
_FIGURES = flags.DEFINE_string("figures", None, "folder for the figures (per-type bars, training curves)")
_OVERLAYS = flags.DEFINE_boolean("overlays", False, "also write a PNG overlay per evaluated case")
_LIVER = flags.DEFINE_string(
    "liver_workdir", None, "liver-ResSeg run(s) for the cascade ROI: with --config the cross-validation's liver folds "
    "(default <workdir>/liver, trained when missing); with --run a workdir trained on the same fold")
_ROI = flags.DEFINE_enum("roi", None, ["cascade", "oracle_gt_liver"],  # evaluate.scoring.ROI_SOURCES (no jax import here)
                         "ROI of --run workdirs (default: their config.eval.roi)")
_RESAMPLE_MASKS = flags.DEFINE_boolean("resample_masks", False, "allow predicted masks on another grid than the "
                                       "case's PV image (resampled onto it; else refused)")
_ALLOW_TRAINING = flags.DEFINE_boolean("allow_training_cases", False, "with --predictions: also score cases that "
                                       "the predicting models' runs trained or validated on (else refused)")


def _load_run(path: Path) -> dict:
    """A training workdir is scored, its stored summary reused only when it scored exactly what scoring would
    now (models, postprocessing, protocol, cases: a run trained on, or given a postprocessing choice, after it was
    scored is scored again); another summary (predictions, a cross-validation, a condition) is read as it is."""
    from paresseg_jax import summary
    from paresseg_jax.evaluate import scoring

    stored = path / summary.SUMMARY_FILE
    if path.suffix != ".json" and (path / "config.json").is_file() and (path / "split.json").is_file():
        liver = _LIVER.value
        if liver is None and stored.is_file():  # scored before with a liver run: the same one again
            liver = summary.read_summary(stored)["info"].get("liver_workdir")
        return scoring.score_run(path, liver_workdir=liver, roi=_ROI.value, overlays=_OVERLAYS.value, reuse=True)
    content = summary.read_summary(path)
    if content["summary"] is None:
        raise app.UsageError(f"{path}: no case of this run was scored (its cohort has no tumor masks)")
    return content


def _scores_file(predictions: Path) -> Path:
    """Where --predictions' scores go: its summary.json, or scores.json beside a summary.json that another command
    (paresseg-predict, with its files, ROI, volumes and times) wrote there and that is not ours to replace."""
    from paresseg_jax import summary

    ours = predictions / summary.SUMMARY_FILE
    if ours.is_file() and "predictions" not in summary.read_summary(ours)["info"]:
        return predictions / "scores.json"
    return ours


def _check_inputs(runs: list[tuple[str, str]]) -> None:
    """Every path before any work (and before importing jax): a typo in the last --run fails at once."""
    if _PREDICTIONS.value:
        preflight.predictions(_PREDICTIONS.value, _COHORT.value)
    for _, path in runs:
        preflight.existing(path, "the run (--run)")
    if _CONFIG.value is not None:
        preflight.training(_CONFIG.value, _WORKDIR.value)
    if _FIGURES.value:
        preflight.output_folder(_FIGURES.value, "the figures folder (--figures)")
        inputs = [p for p in (_PREDICTIONS.value, _COHORT.value, *(path for _, path in runs)) if p]
        preflight.outputs_apart([(_FIGURES.value, "the figures folder (--figures)")], inputs)


def _training_workdirs(name: str, path: Path) -> dict:
    folders = sorted(p for p in path.glob("fold_*") if (p / "metrics.jsonl").is_file()) if path.is_dir() else []
    if path.is_dir() and (path / "metrics.jsonl").is_file():
        folders.insert(0, path)
    return {(name if f == path else f"{name}/{f.name}"): f for f in folders}


def main(argv):
    del argv
    if _CONFIG.value is not None and not _WORKDIR.value:
        raise app.UsageError("--config runs a cross-validation: give its --workdir too")
    flag_checks.in_range("tumor_label", _TUMOR_LABEL.value, 1, 255, meaning="0 is background")
    if _PREDICTIONS.value and not _COHORT.value:
        raise app.UsageError("--predictions needs --cohort (the ground truth to score against)")
    named_runs = []
    for spec in _RUNS.value:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--run {spec!r}: write NAME=PATH")
        named_runs.append((name, path))
    if not (_CONFIG.value is not None or _PREDICTIONS.value or named_runs):
        raise app.UsageError("nothing to evaluate: give --config and --workdir, --predictions and --cohort, or --run NAME=PATH")
    _check_inputs(named_runs)
    from paresseg_jax.evaluate import figures, predictions, tables
    from paresseg_jax.experiments import crossval

    runs, paths = {}, {}
    if _CONFIG.value is not None:
        name = Path(_WORKDIR.value).name
        runs[name] = crossval.cross_validate(_CONFIG.value, _WORKDIR.value, _FOLDS.value, _OVERLAYS.value, _LIVER.value)
        paths[name] = Path(_WORKDIR.value)
    if _PREDICTIONS.value:
        name = Path(_PREDICTIONS.value).name
        scores = _scores_file(Path(_PREDICTIONS.value))
        runs[name] = predictions.evaluate_folder(_PREDICTIONS.value, _COHORT.value, scores, _RESAMPLE_MASKS.value,
                                              tumor_label=_TUMOR_LABEL.value, allow_training_cases=_ALLOW_TRAINING.value)
        paths[name] = Path(_PREDICTIONS.value)
        print(f"scores of {_PREDICTIONS.value}: {scores}")
    for name, path in named_runs:
        runs[name], paths[name] = _load_run(Path(path)), Path(path)

    print("Protocol (test cases, model, ROI, extent, threshold)\n" + tables.protocol_table(runs) + "\n")
    print("Segmentation metrics (Table 7 layout; %, HD95/ASSD in mm)\n" + tables.metrics_table(runs) + "\n")
    print("DPC per tumor type (Tables 8/11 layout; %)\n" + tables.per_type_table(runs) + "\n")
    print("Marginal vs middle tumor slices (Table 12 layout; %)\n" + tables.slice_table(runs) + "\n")
    print("Lesion detection (IoU > 0.5 with the touching lesions; %)\n" + tables.detection_table(runs) + "\n")
    names = list(runs)
    for other in names[1:]:
        result = tables.paired_t_test(runs[other]["cases"], runs[names[0]]["cases"], _METRIC.value)
        print(tables.t_test_line(other, names[0], result))
    if _FIGURES.value:
        out = Path(_FIGURES.value)
        written = [figures.per_type_bars(runs, out / "per_type_dpc.png")]
        workdirs = {k: v for name in names for k, v in _training_workdirs(name, paths[name]).items()}
        if workdirs:
            written.append(figures.training_curves(workdirs, out / "training_curves.png"))
        print("\nfigures: " + ", ".join(str(p) for p in written))


def run():
    cli.run_app(main, huge_page_malloc=False)


if __name__ == "__main__":
    run()
