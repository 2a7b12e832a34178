"""Outbox: sequence numbers, resend with backoff until acknowledged, bounded retries, idempotent acks."""

import logging

import pytest

from recording_bridge.outbox import Outbox
from recording_bridge.windows import PresentationCounts
from server.engine.base import ConfigError


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def pc(i):
    return PresentationCounts(f"p{i}", "s", float(i), "ttl", True, (), {"1:1": i}, {"1:1": 0})


def test_sequence_numbers_increase_and_empty_batches_are_skipped():
    box = Outbox(clock=FakeClock())
    assert box.put([]) is None
    seqs = [box.put([pc(i)]).seq for i in range(3)]
    assert seqs == [1, 2, 3]
    assert [b.seq for b in box.due()] == [1, 2, 3]
    assert box.unacked[0].to_dict() == {"seq": 1, "counts": [pc(0).to_dict()]}


def test_resend_after_timeout_with_backoff_until_ack():
    clk = FakeClock()
    box = Outbox(clock=clk, resend_after_s=1.0, backoff=2.0, max_resend_after_s=3.0, max_attempts=10)
    b = box.put([pc(1)])
    sends = []
    for step in range(100):  # 10 s in 0.1 s steps
        clk.t = 100.0 + step * 0.1
        sends += [round(clk.t - 100.0, 3) for x in box.due() if x is b]
    # waits 1, 2, then capped at 3 s
    assert sends == [0.0, 1.0, 3.0, 6.0, 9.0]
    assert b.attempts == 5
    assert box.ack(1) is True
    clk.t += 100
    assert box.due() == [] and box.unacked == []


def test_acks_are_idempotent_and_unknown_acks_ignored(caplog):
    box = Outbox(clock=FakeClock())
    box.put([pc(1)])
    box.put([pc(2)])
    box.due()
    assert box.ack(2) is True
    with caplog.at_level(logging.WARNING):
        assert box.ack(2) is False  # repeat: harmless
        assert box.ack(7) is False  # never sent
    assert "never sent" in caplog.text and "7" in caplog.text
    assert [b.seq for b in box.unacked] == [1]


def test_bounded_retries_then_failed_and_kept(caplog):
    clk = FakeClock()
    box = Outbox(clock=clk, resend_after_s=1.0, backoff=1.0, max_attempts=3)
    b = box.put([pc(1)])
    n = 0
    with caplog.at_level(logging.ERROR):
        for _ in range(10):
            n += len(box.due())
            clk.t += 1.0
    assert n == 3 and b.failed and box.failed == [b] and box.unacked == [b]
    assert "batch 1" in caplog.text and "not acknowledged after 3 sends" in caplog.text
    assert caplog.text.count("not acknowledged") == 1
    # a later batch still goes out; failed ones come back on retry_failed()
    b2 = box.put([pc(2)])
    assert box.due() == [b2]
    assert box.retry_failed() == 1 and box.due() == [b]
    assert box.ack(1) and box.failed == []


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="backoff"):
        Outbox(backoff=0.5)
    with pytest.raises(ConfigError, match="max_attempts"):
        Outbox(max_attempts=0)
