"""Data layer: CT I/O, other tools' layouts, DICOM import, preprocessing, on-disk cache, synthetic cohort, Grain pipeline."""
