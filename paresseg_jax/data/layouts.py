"""Other tools' cohort layouts as case entries: nnU-Net raw datasets and the Medical Segmentation Decathlon.

Both are a folder with a ``dataset.json`` beside ``imagesTr/`` (with
``labelsTr/``) and ``imagesTs/``:

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

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from paresseg_jax import names
from paresseg_jax.data import io, schema
from paresseg_jax.errors import PareSegError, read_json

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


def dataset_entries(root: Path, channel_phases: Mapping[str, str] | None = None) -> list[io.CaseEntry]:
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
        entries.append(io.CaseEntry(
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
        phases[index] = found[0] if len(found) == 1 and found[0] in io.PHASES else None
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
        names.file_name(case_id, f"the case id of {path.name}", path=folder, fix="rename the file")
        cases.setdefault(case_id, {})[channel] = path
    return cases
