"""bench/loop.py's real-time rig and its measures of overhead and display idle time.

The rig (a process of its own, as in the benchmark) runs against a small scripted server that dispatches
each generation either in one batch, or as a lead-in (the next generation's first orders, sent with the
current one) plus a body (the rest, sent once the current generation's counts are all in). Presentations
last 50 + 50 ms here, so a run takes a few seconds.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bench import loopmeasures as measures
from bench import looprig
from wire import ServerEndpoint
from wire.messages import ImageSpec, Presentation, StimulusBatch, image_to_blob

PERIOD_S = 0.1  # 50 ms on + 50 ms off
LATENCY_S = 0.02
DELAY_S = 0.03  # the scripted server's "overhead" before it dispatches the next generation


# ------------------------------------------------------------------------------------------- pure measures
def test_idle_is_attributed_to_the_boundary_into_the_generation_shown_after_the_gap():
    # (generation, onset, gap before it, lateness, id): g0 of 3, a 2 ms gap (jitter), g1's lead-in on time,
    # a 40 ms gap before g1's body, g2 after a 30 ms gap
    shows = [(0, 0.0, None, 0.0, "a"), (0, 0.2, 0.0, 0.001, "b"), (0, 0.402, 0.002, 0.0, "c"),
             (1, 0.602, 0.0, 0.0, "d"), (1, 0.842, 0.040, 0.0, "e"), (2, 1.072, 0.030, 0.003, "f")]  # fmt: skip
    gaps = measures.display_idle(shows)
    assert gaps["idle"] == {0: pytest.approx(0.040), 1: pytest.approx(0.030)}
    assert gaps["jitter"] == [pytest.approx(0.002)] and gaps["first"] == 0.0
    assert max(gaps["late"]) == pytest.approx(0.003)
    no_gap = [(0, 0.0, None, 0.0, "a"), (1, 0.2, 0.0, 0.0, "b"), (2, 0.4, 0.0, 0.0, "c")]
    assert measures.display_idle(no_gap)["idle"] == {0: 0.0, 1: 0.0}  # every boundary listed, idle or not


def test_the_candidates_batch_is_the_first_after_the_last_counts():
    # (generation, decoded at, new presentations, presentations, batch id); g1's lead-in comes with g0
    batches = [(0, 0.0, 44, 44, "g0"), (1, 0.01, 2, 2, "g1.lead"), (1, 9.0, 42, 42, "g1"), (2, 9.01, 2, 2, "x"),
               (2, 18.5, 0, 42, "resent"), (2, 18.6, 42, 42, "g2")]  # fmt: skip
    last = {0: 8.9, 1: 18.4}
    assert measures.next_body(batches, last) == {0: 9.0, 1: 18.6}  # a re-send with nothing new does not count
    assert measures.lead_ins(batches, last) == 2


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
    handle = looprig._start_rig(server.ep.endpoint, "realtime", LATENCY_S)
    try:
        server.start()
        assert server.done.wait(30), f"counted only {server.counted}"
    finally:
        out = looprig._stop_rig(*handle)
        server.ep.close()
    return out, server


@pytest.mark.parametrize("lead_in", [0, 2])
def test_realtime_rig_cadence_counts_and_idle(lead_in):
    """What the rig does is checked against its own record (arrival and onset times), so the assertions hold
    however late a loaded machine runs the rig's threads: no timing thresholds."""
    out, server = _run(lead_in)
    shows = out["shows"]
    ids = [s[4] for s in shows]
    # every presentation shown exactly once, generation after generation, each in order
    assert ids == [f"{g}.{k}" for g in range(3) for k in range(6)]
    assert sorted(server.counted) == sorted(ids)
    onsets = np.array([s[1] for s in shows])
    arrived = {bid: t for _g, t, _new, _n, bid in out["batches"]}
    # generation 0 goes out whole; later ones as their lead-in (orders < lead_in, with the previous one) + body
    batch_of = {f"{g}.{k}": f"g{g}.{0 if g == 0 or k < lead_in or not lead_in else lead_in}"
                for g in range(3) for k in range(6)}
    # the cadence rule: each onset is the previous one + on + off, or its batch's arrival if that is later
    for i in range(1, len(shows)):
        expected = max(onsets[i - 1] + PERIOD_S, arrived[batch_of[ids[i]]])
        assert onsets[i] == pytest.approx(expected, abs=1e-9)
        assert shows[i][2] == pytest.approx(expected - onsets[i - 1] - PERIOD_S, abs=1e-9)
    gaps = measures.display_idle(shows)
    body = measures.next_body(out["batches"], out["last"])
    assert sorted(body) == [0, 1]
    for g in (0, 1):
        last_onset = onsets[ids.index(f"{g}.5")]
        # the last counts of g go out no earlier than its window's end + the rig's latency
        assert out["last"][g] >= last_onset + PERIOD_S + LATENCY_S - 1e-9
        # the candidates' batch is the one dispatched after those counts (the server waits DELAY_S), not the lead-in
        assert body[g] - out["last"][g] >= DELAY_S
        # idle at g -> g+1: the display's waits for generation g+1's batches (gaps over the jitter bound)
        waits = [arrived[batch_of[ids[i]]] - (onsets[i - 1] + PERIOD_S) for i in range(1, len(ids))
                 if ids[i].startswith(f"{g + 1}.")]
        assert gaps["idle"][g] == pytest.approx(sum(w for w in waits if w > measures.JITTER_S), abs=1e-9)
        first_next = onsets[ids.index(f"{g + 1}.0")]
        if lead_in:  # the display had g+1's lead-in to show while the server worked on g+1's candidates
            assert first_next < body[g]
        else:  # it waited for g+1 from the end of g, and started g+1 the moment it arrived
            assert gaps["idle"][g] >= LATENCY_S + DELAY_S and first_next == pytest.approx(body[g], abs=1e-9)
    assert measures.lead_ins(out["batches"], out["last"]) == (2 if lead_in else 0)
