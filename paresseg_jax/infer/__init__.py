"""Inference on whole studies: slices -> 2.5D stacks -> model -> tumor probability -> volume.

- :func:`predict_volume`: probability volume of windowed images (full slices or overlap tiles).
- :func:`segment_study`: the liver -> tumor cascade, thresholded mask and LiTS label map.
- :func:`segment`: a study as SimpleITK images (or files) in HU -> label map image in PV geometry.
- :func:`predict_files`: files (NIfTI / DICOM folders) in, mask/probability/overlay out in PV geometry.
- :func:`predict_folder`: a cohort or folder of studies -> label maps and ``summary.json``.
- :class:`Segmenter`, :func:`load_ensemble`: models loaded once; several averaged.

Each name is imported on first use, so training's validation, which imports only the forward pass
(:mod:`predict`, :mod:`cascade`), does not load the folder and study machinery above it.
"""

import importlib

_MODULE_OF = {
    "predict_volume": "predict", "segment_study": "cascade", "segment": "study", "predict_files": "study",
    "predict_folder": "folder", "read_study": "study", "overlay_montage": "overlay", "Segmenter": "study",
    "Ensemble": "ensemble", "load_ensemble": "ensemble",
}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
