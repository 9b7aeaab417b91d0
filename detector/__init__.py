"""detector: a streaming anomaly detector for text comments on Kafka.

Comments are embedded in micro-batches, scored by cosine similarity to an
incrementally updated centroid of normal comments, and those below a calibrated
threshold are published as alerts.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("detector")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0.dev0"

__all__ = ["__version__"]
