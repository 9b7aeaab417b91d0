"""detector: a streaming anomaly detector for text comments on Kafka.

Design notes: docs/design/modules.md.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("detector")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0.dev0"

__all__ = ["__version__"]
