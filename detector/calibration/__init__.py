"""Calibration: statistics, the artifact and its sections, per-key thresholds, samples,
the report."""
