"""Calibration: statistics, the artifact, per-key thresholds, samples, the report."""
