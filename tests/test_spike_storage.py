"""Raw spike times (issue 14): captured by the bridge around each onset, carried on the wire, stored with
the clock model and the rig's recording identity, and consistent with the counts the loop used."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from recording_bridge.base import SpikeEvent
from recording_bridge.spikes import SpikeCapture
from server.db.spikes import load_spike_trains, recordings
from spike_fixtures import run_session_with_spikes
from wire import messages as m

pytest_plugins = ["db_fixtures"]


def test_capture_keeps_the_margin_half_open_and_waits_for_the_watermark():
    cap = SpikeCapture(units=["a", "b"], margin=(-0.2, 0.5))
    onset = 1000.0
    # edges: -200 ms is in, +500 ms is out; spikes of other units are ignored
    times = {"a": [onset - 0.2, onset - 0.2000011, onset + 0.0499999, onset + 0.4999, onset + 0.5], "b": [onset + 0.1]}
    cap.add_spikes([SpikeEvent(u, t) for u, ts in times.items() for t in ts] + [SpikeEvent("c", onset)])
    cap.add_onset("p1", onset)
    assert cap.ready(onset + 0.49) == []
    (tr,) = cap.ready(onset + 0.5)
    # whole microseconds: floor((t - onset) * 1e6 + 1e-3), 49.9999 ms -> 49,999 us
    assert tr.times_ns["a"].tolist() == [-200_000_000, 49_999_000, 499_900_000]
    assert tr.times_ns["b"].tolist() == [100_000_000]
    n, dtype, blob = tr.encode(["a", "b"])
    # steps from -200 ms: 0 fits in 16 bits, 249,999 / 449,901 / 300,000 us escape to int32
    assert (n, dtype, len(blob)) == ([3, 1], "dus16", 4 * 2 + 3 * 4)
    assert cap.ready(onset + 10) == []  # emitted once


def test_spikes_batch_checks_its_binary_frames():
    batch = m.SpikesBatch(seq=1, units=["u1", "u2"], clock={"kind": "offset", "offset_s": 1.5},
                          items=[m.SpikeTrains(presentation_id="7", onset_rig_s=3.0, n=[2, 1], blob=0)])
    env = m.Envelope.make("spikes_batch", batch, session="S1", sender="bridge")
    blob = np.array([-5, 7, 9], "<i4").tobytes()
    got, blobs = m.decode(m.encode(env, [blob]))
    assert got.payload.items[0].n == [2, 1] and np.frombuffer(blobs[0], "<i4").tolist() == [-5, 7, 9]
    with pytest.raises(m.ProtocolError, match=r"blob\[0\]: 8 bytes but 3 times as <i4 need 12"):
        m.decode(m.encode(env, [blob[:8]]))
    with pytest.raises(ValueError, match=r"items\[0\]\.n: 1 values for 2 units"):
        m.SpikesBatch.model_validate({"seq": 1, "units": ["u1", "u2"],
                                      "items": [{"presentation_id": "7", "onset_rig_s": 3.0, "n": [1], "blob": 0}]})


def test_live_session_stores_spike_times_whose_window_counts_are_the_stored_counts(repo, db_engine, tmp_path):
    sid = run_session_with_spikes(repo, db_engine, tmp_path)
    trains = load_spike_trains(db_engine, sid)
    with db_engine.connect() as c:
        rows = c.execute(text(
            "SELECT r.presentation_id, r.counts, r.window_start_ms, r.window_end_ms, r.baseline_counts,"
            " r.baseline_start_ms, r.baseline_end_ms, p.rig_onset FROM responses r"
            " JOIN presentations p ON p.id = r.presentation_id WHERE p.session_id = :s"), {"s": sid}).all()
        stored_as = c.execute(text("SELECT DISTINCT time_bytes FROM spike_trains")).scalars().all()
    assert stored_as == [2]  # the bridge sends whole microseconds as 16-bit steps (spike_codec)
    assert len(rows) >= 3 * 8 and set(trains) == {r.presentation_id for r in rows}
    total = 0
    for r in rows:
        tr = trains[r.presentation_id]
        assert (tr.start_ms, tr.end_ms) == (-200.0, 500.0) and tr.onset_rig_s == r.rig_onset
        d = tr.unit_times_ns(0)
        assert np.all(np.diff(d) >= 0) and d.min(initial=0) >= -200_000_000 and d.max(initial=0) < 500_000_000
        lo, hi = round(r.window_start_ms * 1e6), round(r.window_end_ms * 1e6)
        assert int(np.count_nonzero((d >= lo) & (d < hi))) == r.counts[0]
        blo, bhi = round(r.baseline_start_ms * 1e6), round(r.baseline_end_ms * 1e6)
        assert int(np.count_nonzero((d >= blo) & (d < bhi))) == r.baseline_counts[0]
        total += len(d)
        assert tr.clock["kind"] == "offset" and tr.clock["rig_clock"] == "sim"
    assert total > len(rows)  # margins hold spikes beyond the response window
    (rec,) = recordings(db_engine, sid)
    assert rec["client_id"] == "bridge-test" and rec["identity"]["adapter"] == "sim"


def test_spike_times_are_rearranged_into_the_session_unit_order():
    from server.spike_intake import to_session_order

    # batch units ["ch10", "ch2", "ch9"] (sorted as text) whose session positions are 2, 0, 1
    positions = [2, 0, 1]
    per_unit = [np.array([5, 6], "<i4"), np.array([], "<i4"), np.array([-7, 1, 9], "<i4")]
    blob = np.concatenate(per_unit).tobytes()
    out, n = to_session_order(blob, "<i4", [2, 0, 3], np.argsort(positions))
    assert n.tolist() == [0, 3, 2]  # session order: ch2, ch9, ch10
    assert np.frombuffer(out, "<i4").tolist() == [-7, 1, 9, 5, 6]


def test_spike_times_that_trail_a_finished_session_are_stored_with_it(repo, db_engine, tmp_path):
    """The last presentations' spike times follow their counts by the margin: if the operator has started the
    next session meanwhile, they still go to the session they belong to (checked against the database)."""
    import time

    from server.service import SessionCreate, SessionService
    from test_live_loop import FAST, PROBE, _reference_code
    from wire import Peer

    ref = _reference_code(tmp_path)
    spec = SessionCreate(operator="t", subject_id="M1", probe=PROBE, reference={"source": "code", "path": str(ref)},
                         units=["sim:0"])
    service = SessionService(repo, bind="tcp://127.0.0.1:*", timing=FAST)
    bridge = Peer(service.wire_address, client_id="late-bridge", role="bridge", timing=FAST)
    bridge.start()
    try:
        first = service.create(spec)
        service.start(first)  # dispatches (and commits) its first presentations
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not service.loop.stats.dispatched:
            time.sleep(0.02)
        service.stop(first)
        second = service.create(spec)
        service.start(second)
        with db_engine.connect() as c:
            pid = c.execute(text("SELECT min(id) FROM presentations WHERE session_id = :s"), {"s": first}).scalar()
        assert bridge.wait_connected(10)
        blob = np.array([-150_000_000, 75_000_000], "<i4").tobytes()
        batch = m.SpikesBatch(seq=1, units=["sim:0"], clock={"kind": "offset"},
                              items=[m.SpikeTrains(presentation_id=str(pid), onset_rig_s=12.0, n=[2], blob=0)])
        bridge.send("spikes_batch", batch, [blob], session=str(first))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and pid not in load_spike_trains(db_engine, first):
            time.sleep(0.05)
    finally:
        bridge.close()
        service.close()
    tr = load_spike_trains(db_engine, first)[pid]
    assert tr.unit_times_ns(0).tolist() == [-150_000_000, 75_000_000] and tr.onset_rig_s == 12.0
    assert load_spike_trains(db_engine, second) == {}
