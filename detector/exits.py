"""Process exit codes of every `detector` command, in one place (each command's --help
and the CLI reference list them).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

EXIT_OK = 0
EXIT_USAGE = 2  # usage or configuration error, missing input topic, Kafka unreachable at start
EXIT_FATAL_EMBEDDING = 3  # the embedder failed fatally (bad key, no access, unpaid bill)
EXIT_TRANSACTION = 4  # exactly_once: a transaction could not be committed
EXIT_KAFKA = 5  # any other Kafka error
EXIT_OUT_OF_BOUNDS = 6  # replay --compare: the candidate moved the alerts or threshold too far
EXIT_CHECK_FAILED = 7  # check: at least one check failed
EXIT_INTERRUPTED = 130  # Ctrl-C: the command stopped before its end (replay: progress saved)

# What each code means, for --help epilogs and the CLI reference.
MEANINGS: Mapping[int, str] = MappingProxyType({
    EXIT_OK: "success",
    EXIT_USAGE: "usage or configuration error; input topic missing or Kafka unreachable "
                "at start",
    EXIT_FATAL_EMBEDDING: "fatal embedding error (bad API key, no access, unpaid bill)",
    EXIT_TRANSACTION: "exactly_once: a transaction could not be committed",
    EXIT_KAFKA: "other Kafka error",
    EXIT_OUT_OF_BOUNDS: "replay --compare: candidate outside --max-alert-ratio or "
                        "--max-threshold-move",
    EXIT_CHECK_FAILED: "check: at least one check failed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); a second SIGTERM exits with 128 + signal",
})


def by_signal(signum: int) -> int:
    """The exit code of a process ended by signal `signum`."""
    return 128 + signum
