"""The outbox protocol without a broker: acks before done, resends, commits, transactions.

A small fake `Sink` stands in for the producer; what is tested is our own protocol
(which offsets may be committed when), not Kafka.
"""

from __future__ import annotations

import asyncio

import pytest

from detector.errors import TransactionFailedError
from detector.metrics import Metrics
from detector.stream.delivery import Gate
from tests.helpers import TP, FakeCommitter, FakeSink, outbox, wait_for, work


class TestOutbox:
    async def test_a_record_is_committed_only_after_its_outputs_are_acknowledged(self) -> None:
        """The done prefix stops at a record whose alert is not yet acknowledged, and
        moves past it once the broker acks."""
        sink, committer = FakeSink(), FakeCommitter()
        box = outbox(sink, committer)
        first, second, third = work(box, 0), work(box, 1, "alerts"), work(box, 2)
        box.deliver([first, second, third])
        await wait_for(lambda: len(sink.sent) == 1)
        await box.commit()
        assert committer.commits == [{TP: 1}]
        sink.ack_all()
        await box.drain()
        await box.commit()
        assert committer.commits == [{TP: 1}, {TP: 3}]
        assert box.in_flight() == 0

    async def test_a_refused_send_is_resent_with_back_off(self) -> None:
        """A send the producer refuses is sent again after a growing delay, and the record
        is done only once the resend is acknowledged."""
        sink, committer, metrics = FakeSink(refuse=2), FakeCommitter(), Metrics()
        sleeps: list[float] = []
        box = outbox(sink, committer, metrics=metrics, sleeps=sleeps)
        box.deliver([work(box, 0, "alerts")])
        await wait_for(lambda: len(sink.sent) == 1)
        assert sleeps == [0.4, 0.8]
        assert metrics.registry.get_sample_value("detector_publish_retries_total") == 2.0
        assert box.in_flight() == 1
        sink.ack_all()
        await box.drain()
        assert box.in_flight() == 0
        assert metrics.registry.get_sample_value("detector_alerts_total") == 1.0

    async def test_nothing_is_committed_when_nothing_advanced(self) -> None:
        """At-least-once commits are skipped when no offset moved since the last one."""
        committer = FakeCommitter()
        box = outbox(FakeSink(), committer)
        box.deliver([work(box, 0)])
        await box.commit()
        await box.commit()
        assert committer.commits == [{TP: 1}]

    async def test_a_failed_group_commit_is_retried_by_the_next_commit(self) -> None:
        """A group commit that fails is logged, and the next commit carries its offsets."""
        committer = FakeCommitter(fail=True)
        box = outbox(FakeSink(), committer)
        box.deliver([work(box, 0)])
        await box.commit()
        committer.fail = False
        await box.commit()
        assert committer.commits == [{TP: 1}]

    async def test_a_failed_transaction_is_raised(self) -> None:
        """In exactly-once mode a transaction that cannot commit raises to the caller."""
        box = outbox(FakeSink(), FakeCommitter(fail=True), gate=Gate())
        box.deliver([work(box, 0)])
        with pytest.raises(TransactionFailedError, match="transaction fenced"):
            await box.commit()

    async def test_a_transaction_closes_even_with_no_new_offsets(self) -> None:
        """In exactly-once mode every commit closes the transaction, offsets or not."""
        committer = FakeCommitter()
        box = outbox(FakeSink(), committer, gate=Gate())
        await box.commit()
        assert committer.commits == [{}]

    async def test_a_transaction_waits_for_publishes_in_flight(self) -> None:
        """The commit takes the gate only after unacknowledged publishes finished, so the
        transaction holds exactly the outputs of the offsets it commits."""
        sink, committer = FakeSink(), FakeCommitter()
        box = outbox(sink, committer, gate=Gate())
        box.deliver([work(box, 0, "alerts")])
        await wait_for(lambda: len(sink.sent) == 1)
        commit = asyncio.create_task(box.commit())
        for _ in range(10):  # let it run as far as it can: an ungated commit would finish
            await asyncio.sleep(0)
        assert not commit.done()
        sink.ack_all()
        await commit
        assert committer.commits == [{TP: 1}]

    async def test_settled_returns_once_a_partition_has_nothing_in_flight(self) -> None:
        """settled waits for the partition's last record to be acknowledged."""
        sink = FakeSink()
        box = outbox(sink, FakeCommitter())
        box.deliver([work(box, 0, "scores")])
        settled = asyncio.create_task(box.settled([TP]))
        await wait_for(lambda: len(sink.sent) == 1)
        assert not settled.done()
        sink.ack_all()
        await asyncio.wait_for(settled, 5)
