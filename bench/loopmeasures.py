"""What bench/loop.py measures from a run's record: the boundary overhead, lead-ins, the display's idle time
and jitter, and the server's own steps (timed by wrapping them in the bench process)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict


JITTER_S = 0.005  # a gap in the display's cadence up to this long is timer jitter, not idle time


def next_body(batches, last: dict[int, float]) -> dict[int, float]:
    """{g: when the batch carrying g+1's candidates was decoded}: the first batch of generation g+1 with new
    presentations received after the last counts of g were sent (a lead-in of g+1 comes earlier)."""
    out = {}
    for g, t_last in last.items():
        ts = [t for gen, t, new, *_ in batches if gen == g + 1 and t > t_last and new > 0]
        if ts:
            out[g] = min(ts)
    return out


def lead_ins(batches, last: dict[int, float]) -> int:
    """How many generations had presentations received before the previous generation's last counts."""
    return len({gen for gen, t, new, *_ in batches if new > 0 and gen - 1 in last and t < last[gen - 1]})


def shown_per_generation(out: dict) -> dict[int, int]:
    if "shows" in out:
        shown: dict[int, int] = defaultdict(int)
        for s in out["shows"]:
            shown[s[0]] += 1
        return dict(shown)
    return dict(out["shown"])


def display_idle(shows, jitter_s: float = JITTER_S) -> dict:
    """The display's gaps: {"idle": {g: s}} per boundary g -> g+1 (the sum of the gaps over ``jitter_s``
    that ended with a presentation of g+1, 0.0 for a boundary without one), "first": idle within the first
    generation shown, "jitter": the gaps up to ``jitter_s``, "late": the display thread's timer lateness."""
    if not shows:
        return {"idle": {}, "first": 0.0, "jitter": [], "late": []}
    gens = [s[0] for s in shows]
    first = gens[0]
    idle = {g: 0.0 for g in range(first, max(gens))}
    within_first, jitter = 0.0, []
    for gen, _onset, gap, _late, _pid in shows:
        if gap is None or gap <= 0:
            continue
        if gap <= jitter_s:
            jitter.append(gap)
        elif gen == first:
            within_first += gap
        else:
            idle[gen - 1] = idle.get(gen - 1, 0.0) + gap
    return {"idle": idle, "first": within_first, "jitter": jitter, "late": [s[3] for s in shows]}


class StepTimes:
    """Wraps the server's steps (class attributes, this process only) and records (step, start, end,
    CPU seconds of the calling thread, that thread)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float, float, int]] = []
        self._undo: list[tuple[type, str, object]] = []

    def wrap(self, cls: type, method: str, step: str) -> None:
        orig = cls.__dict__[method]
        events = self.events

        def timed(*a, **kw):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return orig(*a, **kw)
            finally:
                events.append((step, t0, time.perf_counter(), time.thread_time() - c0, threading.get_ident()))

        setattr(cls, method, timed)
        self._undo.append((cls, method, orig))

    def install(self) -> None:
        from server.db.repository import Repository
        from server.engine.search import SnSSearch
        from server.live import LiveLoop

        self.wrap(LiveLoop, "_on_counts", "handler")
        self.wrap(LiveLoop, "_dispatch", "dispatch")
        self.wrap(Repository, "record_timings", "persist counts")
        self.wrap(Repository, "record_responses", "persist counts")
        self.wrap(SnSSearch, "tell", "tell")
        self.wrap(SnSSearch, "state", "optimizer state")
        self.wrap(Repository, "complete_generation", "persist scores")
        self.wrap(SnSSearch, "ask", "ask+render")
        self.wrap(Repository, "begin_generation", "persist proposals")

    def uninstall(self) -> None:
        for cls, method, orig in reversed(self._undo):
            setattr(cls, method, orig)
        self._undo.clear()


STEPS = ["receive", "persist counts", "tell", "optimizer state", "persist scores", "ask+render",
         "persist proposals", "dispatch", "other (handler)", "delivery+decode"]  # fmt: skip


def breakdown(events, t0: float, t1: float) -> dict[str, float]:
    """The steps of one boundary: the handler of the last counts (the first to start after t0)."""
    handlers = sorted((e for e in events if e[0] == "handler" and e[1] >= t0 and e[2] <= t1), key=lambda e: e[1])
    if not handlers:
        return {}
    h = handlers[0]
    out = dict.fromkeys(STEPS, 0.0)
    out["receive"] = h[1] - t0
    on_handler_thread = 0.0  # the scores are committed on a writer thread, overlapping ask+render
    for step, a, b, _, thread in events:
        if step != "handler" and a >= h[1] and b <= h[2]:
            out[step] += b - a
            on_handler_thread += (b - a) if thread == h[4] else 0.0
    out["other (handler)"] = (h[2] - h[1]) - on_handler_thread
    out["delivery+decode"] = t1 - h[2]
    out["handler CPU"] = h[3]
    return out


def per_presentation(events) -> list[float]:
    """Handler times of counts that did not complete a generation (not on the critical path)."""
    tells = [e[1] for e in events if e[0] == "tell"]
    return [e[2] - e[1] for e in events if e[0] == "handler" and not any(e[1] <= t <= e[2] for t in tells)]
