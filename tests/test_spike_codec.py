"""Spike times as microsecond steps (snslab_common.spike_codec, migration 0005): exact round trips, the
capture's microsecond rule against the window counter, and rows stored before 0005 still read."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recording_bridge.base import Onset, SpikeEvent
from recording_bridge.spikes import SpikeCapture, decode_times
from recording_bridge.windows import WindowCounter
from server.db.database import current_revision, make_engine, migrate
from snslab_common import spike_codec as sc
from wire import messages as m

pytest_plugins = ["db_fixtures"]

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
int32 = st.integers(-(2**31), 2**31 - 1)


@SETTINGS
@given(st.lists(st.lists(int32, max_size=40), max_size=8), int32, st.booleans())
def test_any_int32_times_round_trip_exactly(units, base, ordered):
    per_unit = [np.array(sorted(u) if ordered else u, dtype=np.int64) for u in units]
    n = [len(u) for u in per_unit]
    blob = sc.encode_us(per_unit, base)
    assert sc.check_length(n, blob) is None
    out = sc.decode_us(n, blob, base)
    assert [o.tolist() for o in out] == [u.tolist() for u in per_unit]


@SETTINGS
@given(st.lists(st.floats(0.0, 300.0), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_realistic_trains_cost_about_two_bytes_a_spike(rates, seed):
    """Sorted Poisson trains in [-200, 500) ms: exact, and 2 bytes a spike plus 4 per step that does not fit."""
    rng = np.random.default_rng(seed)
    per_unit = [np.sort(rng.integers(-200_000, 500_000, rng.poisson(r * 0.7))) for r in rates]
    blob = sc.encode_us(per_unit, sc.base_us(-200.0))
    n = [len(u) for u in per_unit]
    steps = [np.diff(np.concatenate([[-200_000], u])) for u in per_unit]
    big = sum(int(np.count_nonzero(s >= 0xFFFF)) for s in steps)
    assert len(blob) == 2 * sum(n) + 4 * big
    assert all(np.array_equal(a, b) for a, b in zip(sc.decode_us(n, blob, -200_000), per_unit))


def test_escapes_and_truncated_blobs():
    per_unit = [np.array([-200_000, -134_466, 500_000, 499_999]), np.array([], np.int64), np.array([7])]
    blob = sc.encode_us(per_unit, -200_000)
    # steps 0, 65534 fit; 634466 and -1 escape; unit 3 starts again from the base: 200007 escapes
    words = np.frombuffer(blob[:10], "<u2").tolist()
    assert words == [0, 65534, 0xFFFF, 0xFFFF, 0xFFFF]
    assert np.frombuffer(blob[10:], "<i4").tolist() == [500_000, 499_999, 7]
    assert sc.check_length([4, 0, 1], blob[:-1]) == "21 bytes but 5 times with 3 escapes as dus16 need 22"
    with pytest.raises(ValueError, match="need 22"):
        sc.decode_flat([4, 0, 1], blob + b"\0", -200_000)
    with pytest.raises(ValueError, match="int32 range"):
        sc.encode_us([np.array([2**31])], 0)


def test_capture_in_microseconds_counts_what_the_window_counter_counts():
    """Spikes on a 30 kHz clock and just off the window edges: counting the captured microseconds with the
    online window (as `snslab recount` does) gives the counter's counts, and the wire form is exact."""
    rng = np.random.default_rng(3)
    onsets = 100.0 + np.cumsum(rng.uniform(0.2, 0.3, 40)) + rng.uniform(0, 1e-4, 40)
    samples = np.unique(rng.integers(int(99 * 30000), int(112 * 30000), 3000)) / 30000.0
    edges = np.concatenate([onsets + e + d for e in (-0.2, -0.05, 0.0, 0.05, 0.2)
                            for d in (-2e-9, -1e-9, 0, 1e-9, 4e-7)])
    spikes = np.sort(np.concatenate([samples, edges]))
    wc = WindowCounter(response=(0.050, 0.200), baseline=(-0.050, 0.0), units=["u"], session_id="s")
    cap = SpikeCapture(units=["u"], margin=(-0.2, 0.5))
    events = [SpikeEvent("u", float(t)) for t in spikes]
    wc.add_spikes(events)
    cap.add_spikes(events)
    for i, o in enumerate(onsets):
        wc.add_onset(Onset(f"p{i}", rig_s=float(o), source="photodiode"))
        cap.add_onset(f"p{i}", float(o))
    counted = {pc.presentation_id: pc for pc in wc.ready(1e9)}
    trains = {tr.presentation_id: tr for tr in cap.ready(1e9)}
    assert len(counted) == len(trains) == 40
    for pid, tr in trains.items():
        d = tr.times_ns["u"]
        assert np.all(d % 1000 == 0) and np.all(np.diff(d) >= 0)
        assert int(np.count_nonzero((d >= 50_000_000) & (d < 200_000_000))) == counted[pid].counts["u"]
        assert int(np.count_nonzero((d >= -50_000_000) & (d < 0))) == counted[pid].baseline_counts["u"]
        n, dtype, blob = tr.encode(["u"])
        assert dtype == "dus16" and decode_times(n, dtype, blob, tr.window_ms[0])[0].tolist() == d.tolist()
        # a spike t seconds after onset is stored as floor(t * 1e6 + 1e-3) microseconds
        sel = spikes[(spikes >= onsets[int(pid[1:])] - 0.2000011) & (spikes < onsets[int(pid[1:])] + 0.5)]
        us = np.floor((sel - onsets[int(pid[1:])]) * 1e6 + 1e-3).astype(np.int64)
        assert d.tolist() == (1000 * us[(us >= -200_000) & (us < 500_000)]).tolist()


def test_wire_checks_the_length_of_a_steps_blob():
    batch = m.SpikesBatch(seq=1, units=["u1", "u2"], items=[
        m.SpikeTrains(presentation_id="7", onset_rig_s=3.0, n=[2, 1], blob=0, dtype="dus16")])
    env = m.Envelope.make("spikes_batch", batch, session="S1", sender="bridge")
    blob = sc.encode_us([np.array([-5, 70_000]), np.array([9])], sc.base_us(-200.0))
    got, blobs = m.decode(m.encode(env, [blob]))
    assert got.payload.items[0].dtype == "dus16"
    assert [a.tolist() for a in decode_times([2, 1], "dus16", blobs[0], -200.0)] == [[-5000, 70_000_000], [9000]]
    with pytest.raises(m.ProtocolError, match=r"blob\[0\]: 16 bytes but 3 times with 3 escapes as dus16 need 18"):
        m.decode(m.encode(env, [blob[:-2]]))


def test_rows_stored_before_0005_still_read_and_new_rows_need_it(empty_db_url):
    from server.db.records import Proposal
    from server.db.repository import Repository
    from server.db.spikes import STEPS, SpikeTrainRecord, load_spike_trains, pack_times, store_spike_trains

    engine = make_engine(empty_db_url)
    try:
        migrate(engine, "0004_reference_check")  # the revision before the microsecond steps
        repo = Repository(engine)
        sid = repo.create_session(config={}, seed=1, mode="insilico", operator="t", subject_id="s", rig="r")
        repo.add_units(sid, [(0, 1, ""), (1, 1, "")])
        ids = repo.begin_generation(sid, 0, [Proposal(np.full((4, 4, 3), i, np.uint8), "candidate", i,
                                                      code=np.zeros(4), code_index=i) for i in range(3)], b"s")
        trains = [[np.array([-199_999_999, 3, 499_999_999]), np.array([], np.int64)],
                  [np.array([1000, 2000]), np.array([-5000])],
                  [np.array([-200_000_000, 70_000_000, 499_999_000]), np.array([1_000_000])]]
        old = [pack_times(t, (-200.0, 500.0), steps=False) for t in trains]
        assert [tb for _, tb, _ in old] == [4, 4, 4]
        store_spike_trains(engine, sid, [SpikeTrainRecord(ids[i], 10.0 + i, -200.0, 500.0, *old[i], {})
                                         for i in range(2)])
        new = pack_times(trains[2], (-200.0, 500.0))
        assert new[1] == STEPS
        with pytest.raises(Exception, match="ck_spike_trains_time_bytes"):  # refused before 0005
            store_spike_trains(engine, sid, [SpikeTrainRecord(ids[2], 12.0, -200.0, 500.0, *new, {})])

        migrate(engine, "head")
        assert current_revision(engine) == "0005_spike_steps"
        assert store_spike_trains(engine, sid, [SpikeTrainRecord(ids[2], 12.0, -200.0, 500.0, *new, {})])[0] == 1
        got = load_spike_trains(engine, sid)
        for i, pid in enumerate(ids):
            assert [a.tolist() for a in got[pid].per_unit()] == [a.tolist() for a in trains[i]]
        assert [got[pid].resolution_ns for pid in ids] == [1, 1, 1000]

        with pytest.raises(RuntimeError, match="1 rows hold microsecond steps"):
            migrate(engine, "-1")
        with engine.begin() as c:
            c.exec_driver_sql("DELETE FROM spike_trains WHERE time_bytes = 2")
        migrate(engine, "-1")
        assert current_revision(engine) == "0004_reference_check" and len(load_spike_trains(engine, sid)) == 2
    finally:
        engine.dispose()


def test_steps_are_rearranged_into_the_session_unit_order():
    from server.spike_intake import to_session_order

    per_unit = [np.array([5, 70_000, 70_001]), np.array([], np.int64), np.array([-7, 1, 9])]
    blob = sc.encode_us(per_unit, sc.base_us(-200.0))
    positions = [2, 0, 1]  # batch unit k goes to session position positions[k]
    out, n = to_session_order(blob, "dus16", [3, 0, 3], np.argsort(positions), -200.0)
    assert n.tolist() == [0, 3, 3]
    assert [a.tolist() for a in sc.decode_us(n, out, -200_000)] == [[], [-7, 1, 9], [5, 70_000, 70_001]]
