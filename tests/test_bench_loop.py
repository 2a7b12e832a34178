"""bench/loop.py's real-time rig and its measures of overhead and display idle time.

The rig (a process of its own, as in the benchmark) runs against a small scripted server that dispatches
each generation either in one batch, or as a lead-in (the next generation's first orders, sent with the
current one) plus a body (the rest, sent once the current generation's counts are all in). Presentations
last 50 + 50 ms here, so a run takes a few seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import loop as bench  # noqa: E402
from wire import ServerEndpoint  # noqa: E402
from wire.messages import ImageSpec, Presentation, StimulusBatch, image_to_blob  # noqa: E402

PERIOD_S = 0.1  # 50 ms on + 50 ms off
LATENCY_S = 0.02
DELAY_S = 0.03  # the scripted server's "overhead" before it dispatches the next generation


# ------------------------------------------------------------------------------------------- pure measures
def test_idle_is_attributed_to_the_boundary_into_the_generation_shown_after_the_gap():
    # (generation, onset, gap before it, lateness, id): g0 of 3, a 2 ms gap (jitter), g1's lead-in on time,
    # a 40 ms gap before g1's body, g2 after a 30 ms gap
    shows = [(0, 0.0, None, 0.0, "a"), (0, 0.2, 0.0, 0.001, "b"), (0, 0.402, 0.002, 0.0, "c"),
             (1, 0.602, 0.0, 0.0, "d"), (1, 0.842, 0.040, 0.0, "e"), (2, 1.072, 0.030, 0.003, "f")]  # fmt: skip
    gaps = bench.display_idle(shows)
    assert gaps["idle"] == {0: pytest.approx(0.040), 1: pytest.approx(0.030)}
    assert gaps["jitter"] == [pytest.approx(0.002)] and gaps["first"] == 0.0
    assert max(gaps["late"]) == pytest.approx(0.003)
    no_gap = [(0, 0.0, None, 0.0, "a"), (1, 0.2, 0.0, 0.0, "b"), (2, 0.4, 0.0, 0.0, "c")]
    assert bench.display_idle(no_gap)["idle"] == {0: 0.0, 1: 0.0}  # every boundary listed, idle or not


def test_the_candidates_batch_is_the_first_after_the_last_counts():
    # (generation, decoded at, new presentations, presentations, batch id); g1's lead-in comes with g0
    batches = [(0, 0.0, 44, 44, "g0"), (1, 0.01, 2, 2, "g1.lead"), (1, 9.0, 42, 42, "g1"), (2, 9.01, 2, 2, "x"),
               (2, 18.5, 0, 42, "resent"), (2, 18.6, 42, 42, "g2")]  # fmt: skip
    last = {0: 8.9, 1: 18.4}
    assert bench.next_body(batches, last) == {0: 9.0, 1: 18.6}  # a re-send with nothing new does not count
    assert bench.lead_ins(batches, last) == 2


# ------------------------------------------------------------------------------------------- the rig, live
class ScriptedServer:
    """Dispatches ``generations`` of ``n`` presentations; with ``lead_in`` > 0, generation g+1's first
    ``lead_in`` orders go out with g, the rest once g's counts are all in (after ``DELAY_S``)."""

    def __init__(self, generations: int, n: int, lead_in: int):
        self.ep = ServerEndpoint("tcp://127.0.0.1:*", session="bench-test")
        self.ep.on("presentation_report", self._report)
        self.ep.on("counts_batch", self._counts)
        self.generations, self.n, self.lead_in = generations, n, lead_in
        self.open = {g: {f"{g}.{k}" for k in range(n)} for g in range(generations)}
        self.counted: list[str] = []
        self.done = threading.Event()
        self.image = np.full((8, 8, 3), 128, np.uint8)

    def _send(self, g: int, orders) -> None:
        if g >= self.generations or not orders:
            return
        pres = [Presentation(presentation_id=f"{g}.{k}", stimulus_id="s", image=0, order=k, on_ms=50, off_ms=50)
                for k in orders]
        batch = StimulusBatch(batch_id=f"g{g}.{orders[0]}", generation=g, images=[ImageSpec.of("s", self.image)],
                              presentations=pres)
        for c in self.ep.clients(role="display"):
            self.ep.send_to(c.client_id, "stimulus_batch", batch, [image_to_blob(self.image)])

    def start(self) -> None:
        def go() -> None:
            self._send(0, list(range(self.n)))
            self._send(1, list(range(self.lead_in)))

        self.ep._post(go)

    def _report(self, msg) -> None:
        for c in self.ep.clients(role="bridge"):
            self.ep.send_to(c.client_id, "presentation_report", msg.payload)

    def _counts(self, msg) -> None:
        for it in msg.payload.items:
            g = int(it.presentation_id.split(".")[0])
            self.counted.append(it.presentation_id)
            self.open[g].discard(it.presentation_id)
            if not self.open[g] and g == self.generations - 1:
                self.done.set()
            elif not self.open[g]:
                time.sleep(DELAY_S)
                self._send(g + 1, list(range(self.lead_in, self.n)))
                self._send(g + 2, list(range(self.lead_in)))


def _run(lead_in: int, generations: int = 3, n: int = 6) -> tuple[dict, ScriptedServer]:
    server = ScriptedServer(generations, n, lead_in)
    server.ep.start()
    handle = bench._start_rig(server.ep.endpoint, "realtime", LATENCY_S)
    try:
        server.start()
        assert server.done.wait(30), f"counted only {server.counted}"
    finally:
        out = bench._stop_rig(*handle)
        server.ep.close()
    return out, server


@pytest.mark.parametrize("lead_in", [0, 2])
def test_realtime_rig_cadence_counts_and_idle(lead_in):
    out, server = _run(lead_in)
    shows = out["shows"]
    ids = [s[4] for s in shows]
    # every presentation shown exactly once, generation after generation, each in order
    assert ids == [f"{g}.{k}" for g in range(3) for k in range(6)]
    assert sorted(server.counted) == sorted(ids)
    onsets = np.array([s[1] for s in shows])
    gaps = bench.display_idle(shows)
    body = bench.next_body(out["batches"], out["last"])
    assert sorted(body) == [0, 1]
    for g in (0, 1):
        last_onset = onsets[ids.index(f"{g}.5")]
        # the last counts of g go out at its window's end + the rig's latency (the bridge's thread may be late)
        assert out["last"][g] - (last_onset + PERIOD_S + LATENCY_S) == pytest.approx(0.0, abs=0.05)
        # the candidates' batch is the one dispatched after those counts, not the lead-in
        assert body[g] - out["last"][g] >= DELAY_S
    if lead_in:
        assert bench.lead_ins(out["batches"], out["last"]) == 2
        assert gaps["idle"] == {0: 0.0, 1: 0.0}  # the lead-in (200 ms) covers latency + the server's delay
        steps = np.diff(onsets)
        assert steps == pytest.approx(np.full(len(steps), PERIOD_S), abs=1e-9)  # one unbroken cadence
    else:
        assert bench.lead_ins(out["batches"], out["last"]) == 0
        for g in (0, 1):
            # the display waits from the end of g's last presentation to g+1's arrival
            idle = gaps["idle"][g]
            assert idle >= LATENCY_S + DELAY_S
            first_next = onsets[ids.index(f"{g + 1}.0")]
            assert first_next == pytest.approx(body[g])  # g+1 starts the moment it is decoded
            assert idle == pytest.approx(first_next - (onsets[ids.index(f"{g}.5")] + PERIOD_S))
