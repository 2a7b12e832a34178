"""The reliability state of one link: timing, pending re-sends, ids already handled (see wire.transport).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable


from wire.messages import Envelope


log = logging.getLogger("snslab.wire")

SOFTWARE = "snslab-wire/1"
HELLO_FIRST = "sender: unknown client, hello first"


@dataclass(frozen=True)
class Timing:
    """Intervals of the reliability layer (seconds). Tests shrink them; the defaults suit a lab LAN."""

    heartbeat_s: float = 1.0
    heartbeat_misses: int = 3
    ack_timeout_s: float = 0.5
    backoff: float = 2.0
    max_ack_timeout_s: float = 4.0
    max_retries: int = 5
    log_burst: int = 20  # rejection lines logged per log_window_s; a flooding peer's rest are summarised
    log_window_s: float = 10.0
    forget_after_s: float = 60.0  # a client silent this long is dropped from the registry (and its pending)

    @property
    def dead_after_s(self) -> float:
        return self.heartbeat_s * self.heartbeat_misses


@dataclass
class Received:
    """One accepted message as handed to a handler. ``peer`` is the client id (server side) or the
    server's sender id (client side)."""

    env: Envelope
    blobs: list[memoryview]
    peer: str

    @property
    def envelope(self) -> Envelope:
        return self.env

    @property
    def payload(self) -> Any:
        return self.env.payload

    @property
    def type(self) -> str:
        return self.env.type


class Reject(Exception):
    """Raise from a handler to refuse a message: the sender gets a nack with this one-line reason."""


Handler = Callable[[Received], None]


@dataclass
class _Pending:
    id: str
    type: str
    frames: list
    timeout: float
    due: float = 0.0
    attempts: int = 0


class _Link:
    """Reliability state toward one remote: liveness, un-acked messages, ids already handled."""

    HANDLED_MEMORY = 8192

    def __init__(self) -> None:
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.handled: OrderedDict[str, tuple[bool, str]] = OrderedDict()  # id -> (acked, nack reason)
        self.last_rx = -math.inf
        self.last_hb_tx = -math.inf

    def remember(self, mid: str, ok: bool, reason: str = "") -> None:
        self.handled[mid] = (ok, reason)
        while len(self.handled) > self.HANDLED_MEMORY:
            self.handled.popitem(last=False)

    def rearm(self, now: float) -> None:
        """The peer is back: re-send everything pending now, with a fresh retry budget."""
        for p in self.pending.values():
            p.due, p.attempts = now, 0
