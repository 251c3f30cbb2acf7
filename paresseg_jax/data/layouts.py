"""Cohort layouts: where each case's files are, as ``CaseEntry`` records read later by ``case.read_case``.

``read_cohort`` detects which layout a folder holds:

* a ``manifest.json`` (our layout, and any other layout through explicit
  file paths; see ``read_manifest``);
* an nnU-Net raw dataset or an MSD task (``dataset.json``, ``imagesTr/``;
  see below);
* LiTS: ``volume-N.nii`` with ``segmentation-N.nii`` (labels 0 background,
  1 liver, 2 tumor) as a single-phase (PV) cohort;
* case folders holding ``pv.nii.gz`` (and ``art``, ``nc``, ``dl``,
  ``liver``, ``tumor``) without a manifest (no tumor type or scanner known).

nnU-Net raw datasets and Medical Segmentation Decathlon tasks are both a
folder with a ``dataset.json`` beside ``imagesTr/`` (with ``labelsTr/``) and
``imagesTs/``:

* nnU-Net v2 (``Dataset003_Liver``): ``dataset.json`` has ``channel_names``
  (``{"0": "PV", "1": "arterial"}``), ``labels`` (``{"background": 0, "liver": 1,
  "tumor": 2}``, a region as a list of values) and ``file_ending``; images are
  ``imagesTr/<case>_0000.nii.gz``, one file per channel, labels
  ``labelsTr/<case>.nii.gz``.
* MSD (``Task03_Liver``): ``modality`` instead of ``channel_names``, labels as
  ``{"0": "background", "1": "liver", "2": "cancer"}``, one file per case
  (``imagesTr/liver_0.nii.gz``); macOS ``._*`` files in the archive are ignored.

Channels become phases by name (``PHASE_KEYWORDS``, case-insensitive: "PV",
"portal venous", "ART", "arterial", ...), or by an explicit
``channel_phases`` mapping; a single channel of another name ("CT") is PV.
Label names become the liver and tumor masks: a tumor name ("tumor",
"cancer", "lesion", ...) is tumor, "liver" is liver, and the liver mask
covers the tumors too (as LiTS's labels do). ``imagesTs`` (no labels) is
read when the cohort folder given is ``imagesTs`` itself, e.g. as prediction
input; the dataset folder or ``imagesTr`` gives the labelled training cases.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from paresseg_jax import names
from paresseg_jax.atomic import write_text
from paresseg_jax.data import schema
from paresseg_jax.data.images import find_image
from paresseg_jax.errors import BadInputError, MissingInputError, PareSegError, read_json

PHASES = ("pv", "art", "nc", "dl")
MASK_NAMES = ("liver", "tumor")
MANIFEST = "manifest.json"
LITS_LABELS = {"liver_labels": (1, 2), "tumor_labels": (2,)}
DATASET_JSON = "dataset.json"
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES = "imagesTr", "labelsTr", "imagesTs"

# phase -> phrases naming it; a phrase matches whole words, case-insensitively ("AP" in "LIVER 3 PHASE AP", not in "MAP")
PHASE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "pv": ("pv", "pvp", "portal", "venous", "portovenous"),
    "art": ("art", "arterial", "ap", "hap"),
    "nc": ("nc", "non contrast", "noncontrast", "unenhanced", "plain", "native", "pre", "precontrast"),
    "dl": ("dl", "delay", "delayed", "equilibrium"),
}
TUMOR_LABEL_WORDS = ("tumor", "tumour", "cancer", "lesion", "lesions", "mass", "necrosis", "neoplasm", "hcc",
                     "metastasis", "metastases")
LIVER_LABEL_WORDS = ("liver",)
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclasses.dataclass(frozen=True)
class CaseEntry:
    """Where one case's files are, read only when ``read_case`` is called (cohorts stay lazy).

    ``segmentation`` is a label map from which the liver and tumor masks are
    taken by label value (``liver_labels``, ``tumor_labels``), as in LiTS.
    ``resample_masks`` allows masks on another grid than PV (resampled onto it).
    ``liver_label``: ``liver`` is a multi-label map (e.g. TotalSegmentator's,
    liver 5) whose voxels of this value are the liver; None: a 0/1 mask.
    A phase or mask may also be a SimpleITK image already in memory
    (``infer.study.segment``'s), read by the same checks as a file.
    """

    case_id: str
    phases: Mapping[str, Path]
    liver: Path | None = None
    tumor: Path | None = None
    segmentation: Path | None = None
    liver_labels: tuple[int, ...] = (1,)
    tumor_labels: tuple[int, ...] = (1,)
    metadata: Mapping = dataclasses.field(default_factory=dict)
    resample_masks: bool = False
    liver_label: int | None = None


def read_cohort(root: str | os.PathLike, *, channel_phases: Mapping[str, str] | None = None) -> list[CaseEntry]:
    """Case entries of a cohort folder (or a manifest file); read each with ``case.read_case``.

    ``channel_phases`` maps the channels of an nnU-Net/MSD dataset (index or
    name) to phases where their names do not say (see the module docstring).
    """
    root = Path(root)
    if root.is_file() and root.suffix == ".json":
        entries = read_manifest(root)
    elif not root.is_dir():
        raise MissingInputError("cohort folder does not exist", path=root, fix="check the path")
    elif (root / MANIFEST).is_file():
        entries = read_manifest(root / MANIFEST)
    elif dataset_split(root):
        entries = dataset_entries(root, channel_phases)
    elif any(root.glob("volume-*.nii*")):
        entries = _lits_entries(root)
    else:
        entries = [_entry_from_folder(f, f.name, {}) for f in sorted(root.iterdir()) if f.is_dir() and find_image(f, "pv")]
    if not entries:
        raise BadInputError(
            "no cases found", path=root,
            fix="expected a manifest.json, an nnU-Net or MSD dataset (dataset.json, imagesTr/), LiTS files volume-N.nii "
                "with segmentation-N.nii, or case folders holding pv.nii.gz")
    return entries


def case_folder_entry(folder: Path) -> CaseEntry:
    """The entry of a case folder of our layout, from the ``manifest.json`` beside it when it lists the folder
    (matched by folder name), else from the files alone (only ``case_id`` known)."""
    return _entry_from_manifest(folder) or _entry_from_folder(folder, folder.name, {})


def _entry_from_folder(folder: Path, case_id: str, metadata: Mapping) -> CaseEntry:
    if not folder.is_dir():
        raise MissingInputError(f"case folder (case {case_id!r}) does not exist", path=folder, fix="check the path")
    phases = {p: path for p in PHASES if (path := find_image(folder, p)) is not None}
    if "pv" not in phases:
        raise MissingInputError("case folder has no pv image", path=folder,
                                fix="add pv.nii.gz, pv.mha, pv.nrrd or a pv/ DICOM folder")
    return CaseEntry(case_id, phases, find_image(folder, "liver"), find_image(folder, "tumor"), metadata=dict(metadata))


def _entry_from_manifest(folder: Path) -> CaseEntry | None:
    manifest = folder.parent / MANIFEST
    if not manifest.is_file():
        return None
    for entry in read_manifest(manifest):
        if entry.phases.get("pv") is not None and Path(entry.phases["pv"]).parent.resolve() == folder.resolve():
            return entry
    return None


def read_manifest(path: str | os.PathLike) -> list[CaseEntry]:
    """Case entries of a manifest.json (paths relative to the manifest's folder), every file checked to exist.

    Format: ``{"cases": [{"case_id": ..., "tumor_type": ..., "scanner": ...,
    "split": ..., <files>}, ...]}``. Files are either a case folder of our
    layout (``"folder"``, default the case id) or explicit paths:
    ``"phases": {"pv": ..., "art": ...}`` plus ``"liver"``/``"tumor"`` masks or a
    ``"segmentation"`` label map with ``"liver_labels"`` and ``"tumor_labels"``.
    ``"resample_masks": true`` (top level or per case) allows masks on another
    grid than PV. Any other key is kept as metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError("manifest does not exist", path=path, fix="check the path")
    usage = 'expected JSON {"cases": [{"case_id": ...}, ...]}'
    content = read_json(path, usage, what="manifest")
    schema.check_manifest(content, path, PHASES)
    records = content["cases"]
    resample_default = content.get("resample_masks", False)
    root = path.parent
    entries, seen = [], set()
    for i, record in enumerate(records):
        case_id = names.file_name(str(record["case_id"]), f"case #{i}'s case_id", path=path)
        if case_id in seen:
            raise BadInputError(f"case id {case_id!r} appears twice", path=path, fix="give every case its own id")
        seen.add(case_id)
        file_keys = {"folder", "phases", "liver", "tumor", "segmentation", "liver_labels", "tumor_labels", "resample_masks"}
        metadata = {k: v for k, v in record.items() if k not in file_keys and k != "case_id"}
        resample = record.get("resample_masks", resample_default)
        if "phases" not in record:
            entry = _entry_from_folder(root / record.get("folder", case_id), case_id, metadata)
            entries.append(dataclasses.replace(entry, resample_masks=resample))
            continue

        def resolve(name: str | None) -> Path | None:
            if name is None:
                return None
            file = root / name  # an absolute name survives the join
            if not file.exists():
                raise MissingInputError(f"case {case_id!r} names {file}, which does not exist", path=path,
                                        fix="fix the path in the manifest (relative paths start at its folder)")
            return file

        phases = {name: resolve(p) for name, p in record["phases"].items()}
        entries.append(
            CaseEntry(
                case_id,
                phases,
                resolve(record.get("liver")),
                resolve(record.get("tumor")),
                resolve(record.get("segmentation")),
                tuple(record.get("liver_labels", (1,))),
                tuple(record.get("tumor_labels", (1,))),
                metadata,
                resample,
            )
        )
    return entries


def write_manifest(root: str | os.PathLike, records: Sequence[Mapping]) -> Path:
    """Write ``root/manifest.json`` from case records (see ``read_manifest`` for the keys)."""
    return write_text(Path(root) / MANIFEST, json.dumps({"cases": [dict(r) for r in records]}, indent=1))


def _lits_entries(root: Path) -> list[CaseEntry]:
    entries = []
    volumes = {}
    for volume in root.glob("volume-*.nii*"):
        match = re.fullmatch(r"volume-(\d+)\.nii(\.gz)?", volume.name)
        if match is None:
            raise BadInputError(f"LiTS volume {volume.name!r} is not named volume-<number>.nii[.gz]", path=root,
                                fix="rename it (e.g. volume-7.nii.gz, with segmentation-7.nii.gz) or move it out")
        volumes[volume] = match[1]
    for volume, number in sorted(volumes.items(), key=lambda item: int(item[1])):
        segmentation = find_image(root, f"segmentation-{number}")
        metadata = {"tumor_type": None, "scanner": None}
        entries.append(CaseEntry(f"lits-{number}", {"pv": volume}, segmentation=segmentation, metadata=metadata, **LITS_LABELS))
    return entries


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words of a name or description."""
    return re.findall(r"[a-z0-9]+", str(text).lower())


def matches(text: str, phrases: Iterable[str]) -> bool:
    """Whether any phrase occurs in ``text`` as whole consecutive words."""
    haystack = f" {' '.join(words(text))} "
    return any(f" {' '.join(words(phrase))} " in haystack for phrase in phrases if words(phrase))


def phases_named(text: str, keywords: Mapping[str, Iterable[str]] = PHASE_KEYWORDS) -> list[str]:
    """The phases whose keywords ``text`` contains (none, one, or several when it is ambiguous)."""
    return [phase for phase, phrases in keywords.items() if matches(text, phrases)]


def dataset_split(root: Path) -> tuple[Path, str] | None:
    """``(dataset folder, images folder name)`` if ``root`` is an nnU-Net/MSD dataset or one of its image folders."""
    if (root / DATASET_JSON).is_file() and (root / TRAIN_IMAGES).is_dir():
        return root, TRAIN_IMAGES
    if root.name in (TRAIN_IMAGES, TEST_IMAGES) and (root.parent / DATASET_JSON).is_file():
        return root.parent, root.name
    return None


def dataset_entries(root: Path, channel_phases: Mapping[str, str] | None = None) -> list[CaseEntry]:
    """Case entries of an nnU-Net raw dataset or an MSD task (see the module docstring)."""
    dataset, images = dataset_split(Path(root))
    spec_path = dataset / DATASET_JSON
    spec = read_json(spec_path, "repair the file")
    schema.check_dataset(spec, spec_path)
    phases = _channel_phases(spec, spec_path, channel_phases or {})
    ending = spec.get("file_ending", ".nii.gz")
    labelled = images == TRAIN_IMAGES
    liver_labels, tumor_labels = _label_values(spec, spec_path) if labelled else ((1,), (1,))
    entries = []
    for case_id, channel_files in sorted(_case_files(dataset / images, ending, "channel_names" in spec).items()):
        missing = sorted(set(phases) - set(channel_files))
        if missing:
            raise PareSegError(f"case {case_id!r} has no image for channel(s) {missing}", path=dataset / images,
                               fix=f"add {case_id}_{int(missing[0]):04d}{ending}")
        segmentation = dataset / TRAIN_LABELS / f"{case_id}{ending}" if labelled else None
        if segmentation is not None and not segmentation.is_file():
            raise PareSegError(f"case {case_id!r} has no label file", path=segmentation,
                               fix=f"add it, or read {dataset / TEST_IMAGES} for unlabelled cases")
        entries.append(CaseEntry(
            case_id, {phase: channel_files[channel] for channel, phase in phases.items()},
            segmentation=segmentation, liver_labels=liver_labels, tumor_labels=tumor_labels,
            metadata={"tumor_type": None, "scanner": None, "split": images}))
    return entries


def _channel_phases(spec: Mapping, spec_path: Path, override: Mapping[str, str]) -> dict[str, str]:
    """Channel index ("0", "1", ...) -> phase, from the override (by index or name), else by name."""
    channels = {str(k): str(v) for k, v in (spec.get("channel_names") or spec.get("modality") or {"0": "CT"}).items()}
    phases = {}
    for index, name in channels.items():
        given = override.get(index, override.get(name))
        found = [given] if given else phases_named(name)
        phases[index] = found[0] if len(found) == 1 and found[0] in PHASES else None
    if len(channels) == 1 and None in phases.values():
        phases = {index: "pv" for index in channels}  # a single-phase dataset ("CT"): its one phase is the target
    unknown = {channels[i]: i for i, phase in phases.items() if phase is None}
    if unknown or len(set(phases.values())) != len(phases) or "pv" not in phases.values():
        raise PareSegError(
            f"channels {channels} do not name distinct phases (found {phases}); a PV channel is required",
            path=spec_path, fix="map each channel to one of pv, art, nc, dl explicitly (channel_phases, e.g. "
                                "{\"0\": \"pv\", \"1\": \"art\"})")
    return phases


def _label_values(spec: Mapping, spec_path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(liver_labels, tumor_labels)`` from ``labels``: v2 ``{name: value(s)}`` or MSD ``{"value": name}``."""
    labels = spec.get("labels") or {}
    if all(str(k).isdigit() for k in labels):
        named = {str(name): [int(value)] for value, name in labels.items()}
    else:
        named = {str(name): [int(v) for v in (value if isinstance(value, list) else [value])]
                 for name, value in labels.items()}
    liver, tumor = set(), set()
    for name, values in named.items():
        if set(values) == {0}:
            continue
        if matches(name, TUMOR_LABEL_WORDS):
            tumor.update(values)
        elif matches(name, LIVER_LABEL_WORDS):
            liver.update(values)
        else:
            raise PareSegError(f"label {name!r} ({values}) is neither liver nor tumor", path=spec_path,
                               fix="list the cases in a manifest.json with \"segmentation\" and the values that count "
                                   "as liver and as tumor (\"liver_labels\", \"tumor_labels\")")
    if not tumor:
        raise PareSegError(f"no tumor label among {sorted(named)}", path=spec_path,
                           fix=f"name the tumor label with one of {list(TUMOR_LABEL_WORDS)}")
    return tuple(sorted(liver | tumor)), tuple(sorted(tumor))


def _case_files(folder: Path, ending: str, per_channel: bool) -> dict[str, dict[str, Path]]:
    """case id -> channel index -> image file: ``<case>_0001<ending>`` per channel (nnU-Net; in an MSD-style
    dataset when every file is named so), else ``<case><ending>``, one file per case (MSD)."""
    if not folder.is_dir():
        raise PareSegError("does not exist", path=folder, fix="give the dataset folder holding imagesTr/")
    files = {path.name[: -len(ending)]: path for path in sorted(folder.iterdir())
             if path.name.endswith(ending) and not path.name.startswith(".")}
    per_channel = per_channel or (bool(files) and all(_CHANNEL_FILE.match(stem) for stem in files))
    cases: dict[str, dict[str, Path]] = {}
    for stem, path in files.items():
        match = _CHANNEL_FILE.match(stem) if per_channel else None
        if per_channel and match is None:
            raise PareSegError(f"image {path.name} has no channel suffix", path=folder,
                               fix=f"name channel files <case>_0000{ending}, <case>_0001{ending}, ...")
        case_id, channel = (match["case"], str(int(match["channel"]))) if match else (stem, "0")
        case_id = names.file_name(case_id, f"the case id of {path.name}", path=folder,
                                  fix="rename the file (paresseg-predict --rename_unsafe renames its outputs)")
        if channel in cases.get(case_id, {}):  # two unsafe names renamed alike
            raise BadInputError(f"{path.name} and {cases[case_id][channel].name} give the same case id {case_id!r}",
                                path=folder, fix="rename one of the files")
        cases.setdefault(case_id, {})[channel] = path
    return cases
