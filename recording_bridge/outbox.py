"""Sequence-numbered batches of counts, kept and resent until the server acknowledges them.

Pure logic: the clock is injected, sending is the caller's job. Example::

    t = [0.0]
    box = Outbox(clock=lambda: t[0], resend_after_s=1.0, backoff=2.0, max_attempts=3)
    b = box.put([counts])            # seq 1, due now
    assert box.due() == [b]          # caller sends b (b.seq, b.items); attempt 1
    t[0] = 0.5; assert box.due() == []
    t[0] = 1.0; assert box.due() == [b]     # no ack after 1 s: resend (next wait 2 s)
    assert box.ack(1) and not box.ack(1)    # acknowledgements are idempotent
    assert box.unacked == []

After ``max_attempts`` sends without an ack a batch is logged as failed and kept (``failed``); it is not
resent until ``retry_failed()`` (e.g. after the connection to the server comes back).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from server.engine.base import ConfigError

from .windows import PresentationCounts

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One numbered batch of presentation counts and its delivery state."""

    seq: int
    items: tuple[PresentationCounts, ...]
    created_s: float
    attempts: int = 0
    last_sent_s: float | None = None
    next_send_s: float = -math.inf
    failed: bool = False

    def to_dict(self) -> dict:
        return {"seq": self.seq, "counts": [pc.to_dict() for pc in self.items]}


class Outbox:
    """Numbers batches 1, 2, ... (or from ``first_seq``), resends unacknowledged ones with backoff.

    The n-th send of a batch is followed by a wait of ``min(resend_after_s * backoff**(n-1),
    max_resend_after_s)`` before the next one.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        resend_after_s: float = 1.0,
        backoff: float = 2.0,
        max_resend_after_s: float = 30.0,
        max_attempts: int = 10,
        first_seq: int = 1,
    ):
        if not (resend_after_s > 0 and math.isfinite(resend_after_s)):
            raise ConfigError("resend_after_s", f"{resend_after_s!r} is not a positive number of seconds")
        if not backoff >= 1:
            raise ConfigError("backoff", f"{backoff!r} would shrink the wait between resends", ">= 1")
        if not (isinstance(max_attempts, int) and max_attempts >= 1):
            raise ConfigError("max_attempts", f"{max_attempts!r} is not a positive integer")
        self.clock = clock
        self.resend_after_s, self.backoff = float(resend_after_s), float(backoff)
        self.max_resend_after_s, self.max_attempts = float(max_resend_after_s), max_attempts
        self.next_seq = int(first_seq)
        self.first_seq = int(first_seq)
        self._batches: dict[int, Batch] = {}  # insertion order == seq order

    def put(self, items: Iterable[PresentationCounts]) -> Batch | None:
        """Number a batch and queue it (due at once). Returns None for an empty batch."""
        items = tuple(items)
        if not items:
            return None
        b = Batch(seq=self.next_seq, items=items, created_s=self.clock())
        self._batches[b.seq] = b
        self.next_seq += 1
        return b

    def due(self) -> list[Batch]:
        """Batches to send now (first sends and resends), oldest first; they are marked as sent."""
        now = self.clock()
        out = []
        for b in self._batches.values():
            if b.failed or now < b.next_send_s:
                continue
            if b.attempts >= self.max_attempts:
                b.failed = True
                log.error(
                    "outbox: batch %d (%d presentations) not acknowledged after %d sends; kept as failed",
                    b.seq, len(b.items), b.attempts,
                )
                continue
            b.attempts += 1
            b.last_sent_s = now
            b.next_send_s = now + min(self.resend_after_s * self.backoff ** (b.attempts - 1), self.max_resend_after_s)
            out.append(b)
        return out

    def ack(self, seq: int) -> bool:
        """Acknowledge one batch. True if it was outstanding; repeats and unknown numbers return False."""
        if self._batches.pop(seq, None) is not None:
            return True
        if isinstance(seq, int) and self.first_seq <= seq < self.next_seq:
            log.debug("outbox: batch %d acknowledged again", seq)
        else:
            log.warning("outbox: acknowledgement for sequence number %r, which was never sent; ignored", seq)
        return False

    def retry_failed(self) -> int:
        """Make failed batches due again with a fresh attempt budget. Returns how many."""
        n = 0
        for b in self._batches.values():
            if b.failed:
                b.failed, b.attempts, b.next_send_s = False, 0, -math.inf
                n += 1
        return n

    @property
    def unacked(self) -> list[Batch]:
        return list(self._batches.values())

    @property
    def failed(self) -> list[Batch]:
        return [b for b in self._batches.values() if b.failed]
