"""Inference on whole studies: slices -> 2.5D stacks -> model -> tumor probability -> volume.

- :func:`predict_volume`: probability volume of windowed images (full slices or overlap tiles).
- :func:`segment_study`: the liver -> tumor cascade, thresholded mask and LiTS label map.
- :func:`segment`: a study as SimpleITK images (or files) in HU -> label map image in PV geometry.
- :func:`predict_files`: files (NIfTI / DICOM folders) in, mask/probability/overlay out in PV geometry.
- :func:`predict_folder`: a cohort or folder of studies -> label maps and ``summary.json``.
- :class:`Segmenter`, :func:`load_ensemble`: models loaded once; several averaged.
"""

from paresseg_jax.infer.cascade import segment_study
from paresseg_jax.infer.ensemble import Ensemble, load_ensemble
from paresseg_jax.infer.folder import predict_folder
from paresseg_jax.infer.overlay import overlay_montage
from paresseg_jax.infer.predict import predict_volume
from paresseg_jax.infer.study import Segmenter, predict_files, read_study, segment

__all__ = ["predict_volume", "segment_study", "segment", "predict_files", "predict_folder", "read_study",
           "overlay_montage", "Segmenter", "Ensemble", "load_ensemble"]
