"""The rig of bench/loop.py, a process of its own: a display peer and a bridge peer on loopback.

Rig "realtime" shows a FIFO on a fixed cadence (the next onset is the previous one + on + off while there is
work, otherwise the moment the next presentation arrives) and answers each report with counts at the window's
end + the rig's latency; rig "instant" reports every presentation of a batch at once (see bench/loop.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections import defaultdict

import numpy as np

ON_MS, OFF_MS = 100.0, 100.0  # the benchmark's presentation timing (bench/loop.py)
RIG_NICE = int(os.environ.get("SNSLAB_BENCH_RIG_NICE", "0"))  # set by --rig-nice (spawned rig processes read it)


def _report_fields(p, batch_id: str, generation: int, flip: float) -> dict:
    """A presentation_report as the fake display sends it (the flip time is the onset)."""
    return {
        "presentation_id": p.presentation_id, "batch_id": batch_id, "generation": generation,
        "stimulus_id": p.stimulus_id, "order": p.order, "attempt": p.attempt, "flip_time": flip,
        "offset_time": flip + p.on_ms / 1000.0, "frames_on": max(1, round(p.on_ms * 0.06)),
        "frames_off": max(1, round(p.off_ms * 0.06)), "refresh_hz": 60.0, "on_duration_s": p.on_ms / 1000.0,
        "dropped_frames": 0, "marker_sent": False,
    }  # fmt: skip


class _Counts:
    """The bridge's answers: deterministic Poisson counts, drawn in the order the counts are sent."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.seq = 0

    def batch(self, rep):
        from wire.messages import CountsBatch, CountsItem

        self.seq += 1
        item = CountsItem(presentation_id=rep.presentation_id, counts=[int(self.rng.poisson(6))],
                          baseline_counts=[int(self.rng.poisson(2))], onset_rig_s=rep.flip_time,
                          onset_source="simulated", valid=True)
        return CountsBatch(seq=self.seq, units=["sim:0"], items=[item])


def _rig(address: str, results, stop, rig: str = "realtime", latency_s: float = 0.02) -> None:
    """Display + bridge peers (a process of their own). Puts {"connected": True} on ``results`` once both are
    welcomed, and the record of the run once ``stop`` is set:

    batches: [(generation, decoded at, new presentations, presentations, batch_id)] in arrival order;
    last: {generation: when its last counts were sent};
    shows (realtime): [(generation, onset, gap before it or None, timer lateness, presentation_id)];
    shown (instant): {generation: presentations reported}."""
    import logging

    from wire import Peer

    if RIG_NICE:
        os.nice(RIG_NICE)  # the rig's PCs are other machines: their stand-ins must not take the server's CPU
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s rig %(levelname)s %(message)s")
    display = Peer(address, client_id="bench-display", role="display")
    bridge = Peer(address, client_id="bench-bridge", role="bridge", capabilities={"needs_images": False})
    run = _rig_realtime if rig == "realtime" else _rig_instant
    out = run(display, bridge, results, stop, latency_s)
    results.put(out)
    display.close()
    bridge.close(flush_s=1.0)


def _decode(msg) -> float:
    """Copy the images out of the frames (what stimulus_client does before queueing); the time it is done."""
    from wire.messages import blob_to_image

    images = [np.array(blob_to_image(blob, spec)) for blob, spec in zip(msg.blobs, msg.payload.images)]
    assert len(images) == len(msg.payload.images)
    return time.perf_counter()


def _connect(display, bridge, results) -> None:
    display.on("control", lambda msg: None)
    display.start()
    bridge.start()
    display.wait_connected(30)
    bridge.wait_connected(30)
    results.put({"connected": True})


def _rig_instant(display, bridge, results, stop, latency_s: float) -> dict:
    """Every presentation reported at once; counts answered right away, one batch in flight at a time."""
    import queue

    batches: list[tuple] = []
    last: dict[int, float] = {}  # the last counts sent for a generation: the one that completed it
    shown: dict[int, int] = defaultdict(int)  # presentations reported per generation (re-tests and re-shows too)
    reports: queue.Queue = queue.Queue()

    def on_batch(msg) -> None:
        b = msg.payload
        t = _decode(msg)
        batches.append((b.generation, t, len(b.presentations), len(b.presentations), b.batch_id))
        shown[b.generation] += len(b.presentations)
        for k, p in enumerate(sorted(b.presentations, key=lambda p: p.order)):
            display.send("presentation_report", _report_fields(p, b.batch_id, b.generation,
                                                               t + k * (p.on_ms + p.off_ms) / 1000.0))

    display.on("stimulus_batch", on_batch)
    bridge.on("presentation_report", lambda msg: reports.put(msg.payload))
    _connect(display, bridge, results)
    counts = _Counts()
    while not stop.is_set():
        try:
            rep = reports.get(timeout=0.05)
        except queue.Empty:
            continue
        while bridge.pending_count():  # the server is done with the previous counts
            time.sleep(0.0002)
        t0 = time.perf_counter()
        bridge.send("counts_batch", counts.batch(rep))
        last[rep.generation] = t0
    return {"rig": "instant", "batches": batches, "last": last, "shown": dict(shown)}


def _rig_realtime(display, bridge, results, stop, latency_s: float) -> dict:
    """The display shows its FIFO on a fixed cadence and reports each onset; the bridge answers each report
    at onset + on + off (the end of the response window) + ``latency_s``."""
    import heapq
    import itertools
    from collections import deque

    batches: list[tuple] = []
    shows: list[tuple] = []
    last: dict[int, float] = {}
    fifo: deque = deque()  # (presentation, batch_id, generation, arrived at)
    known: set[str] = set()  # every presentation id queued or shown
    period: dict[str, float] = {}  # presentation id -> on + off (s), for the bridge's window end
    cond = threading.Condition()
    due: list[tuple] = []  # heap of (when the counts are due, n, report)
    due_cond = threading.Condition()
    tie = itertools.count()

    def on_batch(msg) -> None:  # the display peer's loop thread
        b = msg.payload
        t = _decode(msg)
        with cond:
            new = [p for p in sorted(b.presentations, key=lambda p: p.order) if p.presentation_id not in known]
            known.update(p.presentation_id for p in new)
            fifo.extend((p, b.batch_id, b.generation, t) for p in new)
            batches.append((b.generation, t, len(new), len(b.presentations), b.batch_id))
            cond.notify_all()

    def show() -> None:  # the display thread
        free_at = None  # when the previous presentation's off period ends (nominal)
        while not stop.is_set():
            with cond:
                if not fifo:
                    cond.wait(0.05)
                    continue
                p, batch_id, generation, arrived = fifo.popleft()
            onset = arrived if free_at is None else max(free_at, arrived)
            while (left := onset - time.perf_counter()) > 0:
                time.sleep(left)
            late = time.perf_counter() - onset
            period[p.presentation_id] = (p.on_ms + p.off_ms) / 1000.0
            shows.append((generation, onset, None if free_at is None else onset - free_at, late, p.presentation_id))
            display.send("presentation_report", _report_fields(p, batch_id, generation, onset))
            free_at = onset + (p.on_ms + p.off_ms) / 1000.0

    def on_report(msg) -> None:  # the bridge peer's loop thread: a report the server forwarded
        rep = msg.payload
        when = rep.flip_time + period.get(rep.presentation_id, (ON_MS + OFF_MS) / 1000.0) + latency_s
        with due_cond:
            heapq.heappush(due, (when, next(tie), rep))
            due_cond.notify_all()

    display.on("stimulus_batch", on_batch)
    bridge.on("presentation_report", on_report)
    _connect(display, bridge, results)
    shower = threading.Thread(target=show, name="rig-display", daemon=True)
    shower.start()
    counts = _Counts()
    while not stop.is_set():  # the bridge thread
        with due_cond:
            if not due:
                due_cond.wait(0.05)
                continue
            wait = due[0][0] - time.perf_counter()
            if wait > 0:
                due_cond.wait(min(wait, 0.05))
                continue
            rep = heapq.heappop(due)[2]
        t0 = time.perf_counter()
        bridge.send("counts_batch", counts.batch(rep))
        last[rep.generation] = t0
    shower.join(5)
    return {"rig": "realtime", "batches": batches, "last": last, "shows": shows}


def _start_rig(address: str, rig: str = "realtime", latency_s: float = 0.02):
    ctx = mp.get_context("spawn")
    results, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_rig, args=(address, results, stop, rig, latency_s), daemon=True)
    proc.start()
    msg = results.get(timeout=120)
    assert msg.get("connected")
    return proc, results, stop


def _stop_rig(proc, results, stop) -> dict:
    stop.set()
    out = results.get(timeout=60)
    proc.join(10)
    return out
