"""Data layer: CT I/O, preprocessing, on-disk cache, synthetic cohort, Grain pipeline."""
