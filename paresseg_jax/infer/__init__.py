"""Inference on whole studies: slices -> 2.5D stacks -> model -> tumor probability -> volume.

- :func:`predict_volume`: probability volume of windowed images (full slices or overlap tiles).
- :func:`segment_study`: the liver -> tumor cascade, thresholded mask.
- :func:`predict_files`: files (NIfTI / DICOM folders) in, mask/probability/overlay out in PV geometry.
"""

from paresseg_jax.infer.cascade import segment_study
from paresseg_jax.infer.overlay import overlay_montage
from paresseg_jax.infer.predict import predict_volume
from paresseg_jax.infer.study import predict_files, read_study

__all__ = ["predict_volume", "segment_study", "predict_files", "read_study", "overlay_montage"]
