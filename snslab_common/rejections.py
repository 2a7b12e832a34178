"""One rate-limited log of rejected input, for the wire endpoints and every stage of the bridge."""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from typing import Callable


_VARYING = re.compile(r"'[^']*'|\d+(\.\d+)?")


class RejectionLog:
    """Counts rejected input per kind and logs each on one line, at most ``burst`` lines per ``window_s``.

    A flooding peer cannot drown the log: past the burst, rejections are only counted, and the next window
    opens with one line saying how many were left out. ``rejected(reason, kind)`` counts and logs;
    ``allow(now)`` is the bare limiter for callers that format their own line.
    """

    def __init__(
        self,
        logger: logging.Logger,
        prefix: str = "",
        *,
        burst: int = 20,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        per_shape: int | None = None,
    ):
        self.logger, self.prefix, self.burst, self.window_s, self.clock = logger, prefix, burst, window_s, clock
        self.per_shape = per_shape  # log one reason (numbers and quoted ids blanked) at most this often
        self._shapes: Counter[tuple[str, str]] = Counter()
        self.counts: Counter[str] = Counter()
        self._start, self._n, self.suppressed = -math.inf, 0, 0

    def allow(self, now: float | None = None) -> bool:
        """True when one more line fits in the current window; opens a new window when it has passed."""
        now = self.clock() if now is None else now
        if now - self._start > self.window_s:
            if self.suppressed:
                self.logger.warning(
                    "suppressed %d further rejection messages in the last %.0f s", self.suppressed, self.window_s
                )
            self._start, self._n, self.suppressed = now, 0, 0
        self._n += 1
        if self._n > self.burst:
            self.suppressed += 1
            return False
        return True

    def __call__(self, reason: str, kind: str = "input") -> None:
        self.counts[kind] += 1
        if self.per_shape is not None:  # the same warning never repeats more than a few times
            shape = (kind, _VARYING.sub("#", reason))
            self._shapes[shape] += 1
            n = self._shapes[shape]
            if n > self.per_shape:
                if n % 1000 == 0:
                    self.logger.warning("%s: rejected %s: %s (%d like it so far)", self.prefix, kind, reason, n)
                return
        if self.allow():
            self.logger.warning("%s: rejected %s: %s", self.prefix, kind, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
