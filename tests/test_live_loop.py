"""The closed loop over real ZeroMQ sockets and a real PostgreSQL: server (SessionService), the simulated
recording bridge, and a scripted display peer that 'shows' each presentation and reports it.

The PsychoPy display under Xvfb is exercised end to end in tests/test_e2e_demo.py; here the display is a
plain wire Peer, so the server's write order, deduplication and bad-input handling can be checked fast.
"""

import threading
import time

import numpy as np
import pytest
from sqlalchemy import text

from recording_bridge.app import BridgeOptions, make_bridge
from server.config import parse_config
from server.insilico import run_probe
from server.service import SessionCreate, SessionService
pytest_plugins = ["db_fixtures"]
from wire import Peer, Timing

FAST = Timing(heartbeat_s=0.2, heartbeat_misses=10, ack_timeout_s=0.3, max_retries=20)
PROBE = {
    "mode": "invariance", "seed": 4, "population": 8, "generations": 5, "reference_repeats": 2,
    "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
    "stages": ["pixel"], "noise": {"kind": "poisson", "window_ms": 150},
    "subject": {"name": "complex-cell", "image_size": 16, "wavelength": 6.0},
}


class ScriptedDisplay:
    """A display peer that 'shows' each presentation for 100 ms on / 100 ms off in real time and reports it;
    with ``hold_after`` it stops showing after that many reports until ``released`` is set."""

    def __init__(self, address, client_id="display-test", hold_after=None, keys=None):
        self.peer = Peer(address, client_id=client_id, role="display", timing=FAST, keys=keys)
        self.reported: list[str] = []
        self.queue: list = []
        self.shown: list[tuple[int, set[int]]] = []  # (generation shown, generations waiting in the queue)
        self.hold_after = hold_after
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.peer.on("stimulus_batch", self._batch)
        self.peer.on("control", lambda msg: None)
        self.peer.start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._show, daemon=True)
        self.thread.start()

    def _batch(self, msg):
        b = msg.payload
        with self.lock:
            self.queue.extend((b, p) for p in sorted(b.presentations, key=lambda p: p.order))

    def _show(self):
        while not self.stop.is_set():
            if self.hold_after is not None and len(self.reported) >= self.hold_after and not self.released.is_set():
                time.sleep(0.01)
                continue
            with self.lock:
                item = self.queue.pop(0) if self.queue else None
                waiting = {b.generation for b, _ in self.queue}
            if item is not None and item[1].presentation_id not in self.reported:
                self.shown.append((item[0].generation, waiting))
            if item is None:
                time.sleep(0.01)
                continue
            b, p = item
            if p.presentation_id in self.reported:
                continue
            t = time.monotonic()
            time.sleep(0.2)  # 100 ms on, 100 ms off
            self.reported.append(p.presentation_id)
            self.peer.send("presentation_report", {
                "presentation_id": p.presentation_id, "batch_id": b.batch_id, "generation": b.generation,
                "stimulus_id": p.stimulus_id, "order": p.order, "attempt": p.attempt,
                "flip_time": t, "offset_time": t + 0.1, "frames_on": 6, "frames_off": 6,
                "refresh_hz": 60.0, "on_duration_s": 0.1, "dropped_frames": 0, "marker_sent": False,
            })

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.peer.close()


def _bridge(address, seed, mode, image_size=16, client_id="bridge-test", keys=None):
    """The simulated bridge, stepped on its own thread: (bridge, stop event, thread)."""
    args = BridgeOptions(server=address, client_id=client_id, adapter="sim", session_seed=seed, mode=mode,
                         subject_params={"image_size": image_size, "wavelength": 6.0}, keys=keys)
    bridge = make_bridge(args, peer_timing=FAST)
    bridge.peer.start()
    stop = threading.Event()

    def run():
        while not stop.is_set():
            bridge.step(0.005)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return bridge, stop, th


@pytest.fixture
def service(repo):
    svc = SessionService(repo, bind="tcp://127.0.0.1:*", timing=FAST)
    yield svc
    svc.close()


def _reference_code(tmp_path):
    """The maximize phase of the in-silico twin gives the reference code, stored as a .npy file."""
    cfg = parse_config(PROBE | {"mode": "maximize", "generations": 4})
    res = run_probe(cfg)
    path = tmp_path / "ref.npy"
    np.save(path, res.probe.selection.code)
    return path


def test_live_session_on_the_simulated_rig_matches_the_in_silico_twin(service, tmp_path, db_engine):
    ref = _reference_code(tmp_path)
    spec = SessionCreate(operator="tester", subject_id="M1", probe=PROBE,
                         reference={"source": "code", "path": str(ref)}, units=["sim:0"])
    sid = service.create(spec)
    display = ScriptedDisplay(service.wire_address)
    bridge, stop, th = _bridge(service.wire_address, PROBE["seed"], "invariance")
    assert display.peer.wait_connected(10) and bridge.peer.wait_connected(10)
    try:
        service.start(sid)
        assert service.wait(sid, 60.0), f"session did not finish: {service.loop.stats}"
    finally:
        stop.set()
        th.join(2)
        display.close()
        bridge.peer.close()

    # Twin: the same probe in silico from the same reference code.
    twin = run_probe(parse_config(PROBE | {"reference": {"source": "code", "path": str(ref)}}))
    live = service.loop.runner
    assert len(live.reports) == 5
    for a, b in zip(live.reports, twin.probe.reports):
        assert np.array_equal(a.responses, b.responses)
        assert np.array_equal(a.fitness, b.fitness)
    # the search's own pick (in silico the run may then re-choose it from fresh presentations)
    assert np.array_equal(live.search.result().code, twin.probe.search.result().code)

    with db_engine.connect() as c:
        n_pres = c.execute(text("SELECT count(*) FROM presentations WHERE session_id = :s"), {"s": sid}).scalar()
        n_resp = c.execute(text("SELECT count(*) FROM responses r JOIN presentations p ON p.id = r.presentation_id"
                                " WHERE p.session_id = :s"), {"s": sid}).scalar()
        status = c.execute(text("SELECT status FROM sessions WHERE id = :s"), {"s": sid}).scalar()
    shown = sum(len(r.responses) for r in live.reports) + 5 * 2  # candidates and re-tests, + 2 references each
    assert n_pres == shown >= 5 * (8 + 2) and n_resp == n_pres and status == "completed"

    assert len(service.loop.stats.overhead_s) == 4  # one server time per boundary, shown on the dashboard
    # No waiting at generation boundaries: when the display took the last presentation of generation g, the
    # next generation's lead-in (its reference repeats, slots 0..1) was already queued behind it.
    last_of = {g: waiting for g, waiting in display.shown}
    assert sorted(last_of) == [0, 1, 2, 3, 4]
    assert all(g + 1 in last_of[g] for g in range(4)), last_of
    with db_engine.connect() as c:
        lead = c.execute(text(
            "SELECT g.index, p.order_in_batch, p.kind FROM presentations p JOIN generations g"
            " ON g.id = p.generation_id WHERE p.session_id = :s AND p.order_in_batch < 2 ORDER BY 1, 2"),
            {"s": sid}).all()
        statuses = c.execute(text("SELECT status FROM generations WHERE session_id = :s"), {"s": sid}).scalars().all()
    assert [(g, o, k) for g, o, k in lead] == [(g, o, "reference") for g in range(5) for o in range(2)]
    assert statuses == ["completed"] * 5  # the last generation planned nothing ahead
