"""The exception tree of detector: one root, few leaves.

    DetectorError
    ├── ConfigError                 invalid configuration or artifact; fail at start
    ├── CalibrationError            calibration input cannot give a trustworthy threshold
    ├── StateError                  a state snapshot cannot be read or does not fit
    ├── KafkaUnavailableError       the cluster stayed unreachable (or refused our
    │                               credentials) for kafka.connect_deadline_s
    ├── TransactionFailedError      exactly_once: a transaction could not be committed;
    │                               stop, a restart resumes from the last committed one
    └── EmbeddingError              an embedder call failed; `retriable` says what to do
        ├── RetriableEmbeddingError   5xx, timeouts, resets, malformed bodies: retry
        │   └── ThrottledError        429 / Throttling.*: back off `retry_after`, pause input
        ├── BatchRejectedError        the request was refused for its content
        │                             (InvalidParameter, DataInspectionFailed, TooLarge):
        │                             split the batch to find the text to dead-letter
        └── FatalEmbeddingError       auth or billing (InvalidApiKey, AccessDenied,
                                      Arrearage): stop consuming, readiness false

Retry loops ask the error (`err.retriable`), not a list of types. Messages never
contain secrets: embedders build them from status codes and response bodies only.
"""

from __future__ import annotations


class DetectorError(Exception):
    """Root of every error detector raises on purpose."""

    retriable: bool = False


class ConfigError(DetectorError):
    """The configuration, or an artifact it points at, is invalid."""


class CalibrationError(DetectorError):
    """Calibration inputs cannot produce a trustworthy threshold."""


class StateError(DetectorError):
    """A state snapshot cannot be read or does not match the configuration."""


class KafkaUnavailableError(DetectorError):
    """Kafka could not be reached or refused the credentials within the start deadline."""


class TransactionFailedError(DetectorError):
    """A Kafka transaction could not be committed (exactly_once); it cannot be retried."""


class EmbeddingError(DetectorError):
    """An embedding request failed.

    `code` is the provider's error code when one was returned (e.g.
    ``Throttling.RateQuota``), `status` the HTTP status when there was a response.
    """

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class RetriableEmbeddingError(EmbeddingError):
    """A transient failure: the same request may succeed later."""

    retriable = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class ThrottledError(RetriableEmbeddingError):
    """The provider asked us to slow down; the consumer pauses instead of buffering."""


class BatchRejectedError(EmbeddingError):
    """The provider refused the request because of what one of the texts contains."""


class FatalEmbeddingError(EmbeddingError):
    """No request can succeed until an operator acts (bad key, no access, unpaid bill)."""
