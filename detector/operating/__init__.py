"""The model of normal's lifecycle in a running detector: start, drift, labels, adoption."""
