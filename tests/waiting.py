"""The one bounded wait of the test suite: a bound on how long something may take, never a timing assertion.

``assert wait_for(lambda: ..., 60)``: True as soon as the condition holds; False once ``timeout_s`` has
passed (generous by default: the machine is shared). ``poll``: wire endpoints that run without a thread
are driven while waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


def wait_for(cond: Callable[[], object], timeout_s: float = 90.0, step_s: float = 0.005, *,
             poll: Iterable = ()) -> bool:
    deadline = time.monotonic() + timeout_s
    poll = list(poll)
    while time.monotonic() < deadline:
        if cond():
            return True
        for endpoint in poll:
            endpoint.poll_once(step_s)
        if not poll:
            time.sleep(step_s)
    return bool(cond())
