"""Benchmarks: each prints a table plus JSON of ratios measured in one run."""
