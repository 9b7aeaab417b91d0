"""`detector replay --artifact FILE --compare`: which alerts a candidate calibration
artifact adds and removes over a range, against the artifact in force, before anyone
publishes it.

The range is resolved once and replayed twice, frozen (no learning, so each side sees
only its artifact): once from the artifact in force (the one a starting replica would
use: published on the state topic unless the configured file is newer, detector.state.published)
and once from the candidate. Alerts are matched by source (topic, partition, offset). The
report counts alerts on each side, the added and removed ones per key (the comment's
`scoring.key_field` value; ``(none)`` without one) and quotes a few examples of each.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import structlog

from detector.calibration.artifact import load_artifact
from detector.commands.replay import ReplayOptions, _announce_stop, _run_plan
from detector.config import Settings
from detector.embedders import Embedder, build_embedder
from detector.errors import ConfigError
from detector.exits import EXIT_OK
from detector.io.ranges import Plan
from detector.operating import startup
from detector.signals import install_stop_handlers
from detector.state.published import Published, version_of
from detector.state.store import StateStore

log = structlog.get_logger("detector.commands.compare")

EXAMPLES = 5
NO_KEY = "(none)"


async def compare(settings: Settings, opts: ReplayOptions, candidate: Path, *,
                  embedder: Embedder | None = None, stop: asyncio.Event | None = None
                  ) -> dict[str, Any]:
    """The comparison report of `candidate` against the artifact in force over the range."""
    stop = stop or asyncio.Event()
    load_artifact(candidate)  # a clear error before any replay
    plan = await opts.plan(settings)
    owned = embedder is None
    embedder = embedder or build_embedder(settings)
    try:
        published = await _published(settings, embedder)
        current = await startup.initial_state(settings, embedder, published)
        trial = settings.model_copy(update={"scoring": settings.scoring.model_copy(
            update={"calibration_file": candidate})})
        proposed = await startup.initial_state(trial, embedder)
        runs = []
        for run_settings, base in ((settings, current), (trial, proposed)):
            out = io.BytesIO()
            quiet = replace(opts, output=None, dry_run=False, alerts_topic=None,
                            scores_file=None, state="frozen", snapshot=None, resume=False,
                            progress_file=None, show_progress=False)
            await _run_plan(run_settings, quiet, Plan.from_json(plan.to_json()),
                            embedder=embedder, stop=stop, out=out, base=base)
            if stop.is_set():
                msg = "comparison interrupted"
                raise ConfigError(msg)
            runs.append([orjson.loads(line) for line in out.getvalue().splitlines() if line])
    finally:
        if owned:
            await embedder.aclose()
    report = diff(runs[0], runs[1])
    report["range"] = {"topic": plan.topic, "partitions": {
        str(p): list(r) for p, r in sorted(plan.ranges.items())}, "records": plan.total()}
    report["in_force"]["version"] = current.version
    report["in_force"]["source"] = current.origin if current.version else "seed"
    report["candidate"]["version"] = version_of(load_artifact(candidate))
    report["candidate"]["file"] = str(candidate)
    return report


async def _published(settings: Settings, embedder: Embedder) -> Published | None:
    """The published artifact a starting replica would use (detector.operating.startup)."""
    if not settings.state.enabled:
        return None
    store = StateStore(settings)
    await store.load()
    return startup.published(settings, embedder, store.calibration)


def diff(current: list[dict[str, Any]], candidate: list[dict[str, Any]]
         ) -> dict[str, Any]:
    """Alerts the candidate adds and removes, per key, with examples. Pure."""
    def by_source(alerts: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
        return {(a["source"]["topic"], a["source"]["partition"], a["source"]["offset"]): a
                for a in alerts}

    now, then = by_source(current), by_source(candidate)
    added = [then[k] for k in sorted(then.keys() - now.keys())]
    removed = [now[k] for k in sorted(now.keys() - then.keys())]
    return {"in_force": {"alerts": len(now)}, "candidate": {"alerts": len(then)},
            "kept": len(now.keys() & then.keys()),
            "added": _side(added), "removed": _side(removed)}


def _side(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    keys = Counter(_key(a) for a in alerts)
    return {"count": len(alerts), "by_key": dict(sorted(keys.items())),
            "examples": [{"id": a.get("id"), "key": _key(a), "text": a["text"][:200],
                          "similarity": a["similarity"], "threshold": a["threshold"],
                          "source": {f: a["source"][f] for f in ("topic", "partition",
                                                                 "offset")}}
                         for a in alerts[:EXAMPLES]]}


def _key(alert: dict[str, Any]) -> str:
    key = alert.get("baseline", {}).get("comment_key")
    return NO_KEY if key is None else str(key)


def command(settings: Settings, opts: ReplayOptions) -> int:
    """`detector replay --artifact FILE --compare`: the report of `opts.artifact` against
    the artifact in force, as JSON to `opts.output` or stdout, and a summary on stderr."""
    candidate = opts.artifact
    if candidate is None:
        msg = "--compare needs --artifact"
        raise ConfigError(msg)

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        install_stop_handlers(stop, announce=_announce_stop)
        return await compare(settings, opts, candidate, stop=stop)

    report = asyncio.run(main())
    body = orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n"
    if opts.output:
        opts.output.write_bytes(body)
    else:
        sys.stdout.buffer.write(body)
    sys.stderr.write(
        f"compare summary: records={report['range']['records']} "
        f"in_force={report['in_force']['alerts']} candidate={report['candidate']['alerts']} "
        f"added={report['added']['count']} removed={report['removed']['count']}\n")
    return EXIT_OK
