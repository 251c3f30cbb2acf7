"""Checks of a command's inputs and outputs before any work: paths, headers and output locations.

They read no voxels and import no jax, so a launcher runs them first and a
wrong path, a file that is no image, or an output that cannot be written
fails in a second, not after minutes of reading, compiling and computing
(and not after half of the outputs were written).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from paresseg_jax import flag_checks, names
from paresseg_jax.atomic import temporary_name
from paresseg_jax.data.images import find_image, read_image_header
from paresseg_jax.data.layouts import read_cohort
from paresseg_jax.errors import MissingInputError, OutputError

# Single-file formats: written under a temporary name and renamed whole (MHD/NHDR would leave a data
# file named after the temporary).
IMAGE_OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def existing(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it exists, else a MissingInputError naming the flag or role ``what``."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{what} does not exist", path=path, fix="check the path")
    return path


def image(path: str | os.PathLike, what: str) -> Path:
    """An image file or DICOM folder whose header reads as a 3D scalar volume."""
    existing(path, what)
    read_image_header(path)
    return Path(path)


def output_file(path: str | os.PathLike, what: str, suffixes: Sequence[str] | None = None, *,
                overwrite: bool = True) -> Path:
    """A file path the command can create (its folder exists or can be made, and is writable)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} is an existing folder", path=path, fix="give a file name")
    if suffixes is not None and not path.name.lower().endswith(tuple(suffixes)):
        raise OutputError(f"{what} has an unsupported file type", path=path,
                          fix=f"end the name with one of {', '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise OutputError(f"{what} exists", path=path, fix="remove it, choose another name, or pass --overwrite")
    if len(temporary_name(path.name).encode()) > names.NAME_MAX:
        raise OutputError(f"{what} has a name too long to write ({len(path.name.encode())} bytes with its temporary "
                          f"suffix over {names.NAME_MAX})", path=path.parent, fix="choose a shorter name")
    _writable_folder(path.parent, what, path)
    return path


def output_folder(path: str | os.PathLike, what: str, *, overwrite: bool = True) -> Path:
    """A folder the command can create or fill; a non-empty one only with ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} is an existing file", path=path, fix="give a folder name")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise OutputError(f"{what} is a folder that is not empty", path=path,
                          fix="give a new or empty folder, or pass --overwrite to replace it")
    _writable_folder(path.parent, what, path)
    return path


def _writable_folder(folder: Path, what: str, target: Path) -> None:
    """The first existing ancestor of ``folder`` must be a writable folder (the rest can be made)."""
    ancestor = folder.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create {what}: {ancestor} is a file, not a folder", path=target,
                          fix="choose another location")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create {what}: no permission to write in {ancestor}", path=target,
                          fix="choose a location you can write to")


def models(sources, what: str = "the model folder") -> None:
    """Every model source (a path or a list of them: saved models, training or cross-validation workdirs) holds
    a saved model."""
    from paresseg_jax import model_io

    for source in [sources] if isinstance(sources, (str, os.PathLike)) else list(sources or ()):
        model_io.model_folders(existing(source, what))


def prediction(phase_paths: Mapping[str, str | os.PathLike | None], model, out: str | os.PathLike | None, *,
               liver_model=None, liver=None, gt=None, prob_out=None, overlay_out=None, dicom_seg_out=None,
               lesions_out=None) -> None:
    """Every path of one ``predict_files`` call: images readable, model folders present (``model`` and
    ``liver_model``: a path, a list of them, or None when loaded already), outputs writable and distinct (one
    output over another, or over an input, would leave a file that is neither)."""
    for name, path in phase_paths.items():
        if path is not None:
            image(path, f"the {name.upper()} image (--{name})")
    for path, what in ((liver, "the liver mask (--liver)"), (gt, "the ground-truth mask (--gt)")):
        if path is not None:
            image(path, what)
    models(model)
    models(liver_model, "the liver model folder")
    outputs = [(out, "the mask output (--out)", IMAGE_OUTPUT_SUFFIXES),
               (prob_out, "the probability output (--prob)", IMAGE_OUTPUT_SUFFIXES),
               (overlay_out, "the overlay output (--overlay)", FIGURE_SUFFIXES),
               (dicom_seg_out, "the DICOM-SEG output (--dicom_seg)", (".dcm",)),
               (lesions_out, "the lesion table output (--lesions)", (".csv",))]
    outputs_apart([(p, what) for p, what, _ in outputs if p is not None],
                  [p for p in (*phase_paths.values(), liver, gt) if p is not None])
    for path, what, suffixes in outputs:
        if path is not None:
            output_file(path, what, suffixes)


def _identity(path: str | os.PathLike) -> tuple:
    """What two paths share when they name one file: the inode of an existing file (hard links too)."""
    try:
        status = os.stat(path)
    except OSError:
        return ()
    return (status.st_dev, status.st_ino)


def outputs_apart(outputs: Sequence[tuple[str | os.PathLike, str]], inputs, *, whole: bool = False) -> None:
    """Refuse, before any work, an output that is an input or lies inside an input folder (compared as resolved
    real paths and inodes: symlinks, ``..`` and hard links do not get through), or two outputs that meet.
    ``outputs``: ``(path, what)`` pairs, ``what`` naming it in the error; ``whole``: they are folders replaced
    whole, so an input inside one is refused too."""
    files, folders = {}, set()
    for source in inputs:
        real = os.path.realpath(source)
        files[real] = files[_identity(source) or real] = source
        if os.path.isdir(real):
            folders.add(real)
    taken: dict = {}
    for path, what in outputs:
        real = os.path.realpath(path)
        source = files.get(real) or files.get(_identity(path) or real)
        if source is not None:
            raise OutputError(f"{what} would overwrite an input ({source})", path=path,
                              fix="write the output elsewhere")
        inside = next((f for f in folders if real.startswith(f.rstrip(os.sep) + os.sep)), None)
        if inside is not None:
            raise OutputError(f"{what} would write into the input folder {inside}", path=path,
                              fix="write the output elsewhere")
        held = next((files[f] for f in files if whole and isinstance(f, str) and f.startswith(real + os.sep)), None)
        if held is not None:
            raise OutputError(f"{what} would be replaced whole, with the input {held} inside it", path=path,
                              fix="write the output elsewhere")
        for key in {real, _identity(path) or real}:
            if key in taken:
                raise OutputError(f"{what} is given for two outputs (also {taken[key]})", path=path,
                                  fix="give each output its own name")
            taken[key] = what


def cohort_inputs(entries, source: str | os.PathLike) -> list[Path]:
    """Every file a cohort's entries read, and the manifest or dataset.json that lists them."""
    source = Path(source)
    files = [p for p in (source, source / "manifest.json", source / "dataset.json") if p.is_file()]
    return files + [path for entry in entries for path in case_files(entry)]


def case_files(entry) -> list[Path]:
    """The images and masks one cohort entry (``CaseEntry``) reads."""
    return [p for p in (*entry.phases.values(), entry.liver, entry.tumor, entry.segmentation) if p is not None]


def training(config, workdir: str | os.PathLike) -> None:
    """A training run's workdir location, cohort (manifest and every file it names) or cache, and
    ``init_from`` model, before jax starts or preprocessing reads a volume."""
    from paresseg_jax import model_io

    output_folder(workdir, "the workdir (--workdir)")
    flag_checks.all_in_range(config.get("eval", {}), flag_checks.EVAL_RANGES, prefix="config.eval.")
    data = config.data
    if data.get("cohort_dir"):
        outputs_apart([(workdir, "the workdir (--workdir)")], [data.cohort_dir])
        read_cohort(existing(data.cohort_dir, "the cohort (config.data.cohort_dir)"))
    elif data.get("cache_dir"):
        existing(data.cache_dir, "the preprocessed cache (config.data.cache_dir)")
    if config.train.get("init_from"):
        model_io.resolve_model_dir(existing(config.train.init_from, "the initial model (config.train.init_from)"))


def predictions(folder: str | os.PathLike, cohort: str | os.PathLike) -> dict[str, Path]:
    """``case_id -> predicted mask file`` for every case of ``cohort``; a missing one is an error before any is read."""
    folder = existing(folder, "the predictions folder (--predictions)")
    entries = read_cohort(existing(cohort, "the cohort (--cohort)"))
    found = {entry.case_id: find_image(folder, entry.case_id) for entry in entries}
    for case_id, path in found.items():
        if path is None:
            raise MissingInputError(f"no prediction for case {case_id!r} (expected {case_id}.nii.gz)", path=folder,
                                    fix="predict every case of the cohort, or score a cohort that holds only the "
                                    "predicted cases")
    return found
