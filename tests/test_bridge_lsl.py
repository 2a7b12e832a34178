"""LSL source against real pylsl outlets on loopback: counts equal the spikes inside each window exactly."""

import os
from pathlib import Path

# liblsl reads its config on first use: point it at loopback before pylsl does anything.
os.environ["LSLAPICFG"] = str(Path(__file__).with_name("lsl_loopback.cfg"))

import logging  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pylsl = pytest.importorskip("pylsl")

from recording_bridge.adapters.lsl import LslSource, format_marker  # noqa: E402
from recording_bridge.pipeline import CountingPipeline  # noqa: E402
from recording_bridge.windows import WindowCounter  # noqa: E402

RESP, BASE = (0.050, 0.200), (-0.050, 0.0)
UNITS = ["3:1", "3:2", "7:1"]


@pytest.fixture
def lsl_pair():
    """A spike outlet and a marker outlet with names unique to this test (the machine is shared)."""
    tag = uuid.uuid4().hex[:8]
    spikes = pylsl.StreamOutlet(
        pylsl.StreamInfo(f"test-spikes-{tag}", "Spikes", 2, pylsl.IRREGULAR_RATE, pylsl.cf_int32, f"s-{tag}")
    )
    markers = pylsl.StreamOutlet(
        pylsl.StreamInfo(f"test-markers-{tag}", "Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string, f"m-{tag}")
    )
    yield spikes, markers, tag
    del spikes, markers


def connect(tag, **kw):
    src = LslSource(spike_stream=f"test-spikes-{tag}", marker_stream=f"test-markers-{tag}", **kw)
    assert src.connect(timeout_s=10.0), "outlets on loopback did not resolve"
    return src


def spike_train(rng, onsets, t0, t1, n=1500):
    """Random spikes for UNITS, none within 1 ms of any window edge (LSL clock corrections are ~us)."""
    t = rng.uniform(t0, t1, size=n)
    edges = np.concatenate([np.asarray(onsets) + e for e in (*RESP, *BASE)])
    t = t[np.min(np.abs(t[:, None] - edges[None, :]), axis=1) > 1e-3]
    u = rng.integers(0, len(UNITS), size=t.size)
    order = np.argsort(t)
    return t[order], u[order]


def expected(t, u, onset, window):
    m = (t >= onset + window[0]) & (t < onset + window[1])
    return {unit: int(np.sum(m & (u == i))) for i, unit in enumerate(UNITS)}


def push_spikes(outlet, t, u):
    for ti, ui in zip(t, u):
        ch, unit = UNITS[ui].split(":")
        outlet.push_sample([int(ch), int(unit)], float(ti))


def run_until(pipe, n, seconds=15.0):
    out, deadline = [], time.monotonic() + seconds  # a guard against hanging, not a timing assertion
    while len(out) < n and time.monotonic() < deadline:
        out += pipe.step(timeout_s=0.05)
    return out


def test_lsl_counts_exact_against_real_outlets(lsl_pair, caplog):
    spikes_out, markers_out, tag = lsl_pair
    src = connect(tag, photodiode=False)
    assert spikes_out.wait_for_consumers(5.0) and markers_out.wait_for_consumers(5.0)
    rng = np.random.default_rng(11)
    base = pylsl.local_clock() + 1.0
    flips = base + 0.25 * np.arange(20)
    t, u = spike_train(rng, flips, base - 0.3, flips[-1] + 0.3)
    pipe = CountingPipeline(src, WindowCounter(RESP, BASE, units=UNITS, session_id="s1"))
    pipe.expect([f"p{k}" for k in range(20)])
    pipe.early_s = 0.0  # an onset whose batch has not come is refused at once (not after 2 s)

    with caplog.at_level(logging.WARNING):
        for k, f in enumerate(flips):
            markers_out.push_sample([format_marker(f"p{k}")], float(f))
        markers_out.push_sample(["hello"], float(base))  # malformed
        markers_out.push_sample(["pres:stranger"], float(base))  # never dispatched
        spikes_out.push_sample([5, -3], float(base - 0.3))  # bad unit (before the train: the stream stays in order)
        last_end = flips[-1] + RESP[1]
        cut = np.searchsorted(t, last_end - 0.02)
        push_spikes(spikes_out, t[:cut], u[:cut])  # rig data stops 20 ms before the last window's end
        out = run_until(pipe, 19)
        time.sleep(0.2)
        out += pipe.step(0.05)
        assert [pc.presentation_id for pc in out] == [f"p{k}" for k in range(19)]  # p19 must wait
        push_spikes(spikes_out, t[cut:], u[cut:])
        spikes_out.push_sample([-1, -1], float(flips[-1] + 1.0))  # heartbeat: nothing more before this
        out += run_until(pipe, 1)

    assert [pc.presentation_id for pc in out] == [f"p{k}" for k in range(20)]
    for k, pc in enumerate(out):
        assert pc.onset_rig_s == pytest.approx(flips[k], abs=1e-3)
        assert pc.counts == expected(t, u, pc.onset_rig_s, RESP), k
        assert pc.baseline_counts == expected(t, u, pc.onset_rig_s, BASE), k
        assert pc.onset_source == "flip" and pc.valid and "no photodiode or TTL" in pc.qc_reasons[0], pc.qc_reasons
    assert sum(sum(pc.counts.values()) for pc in out) > 300
    assert "'hello' is not 'pres:<presentation_id>'" in caplog.text
    assert "'stranger' was never dispatched" in caplog.text
    assert "sample [5, -3]" in caplog.text
    assert src.units() == UNITS
    src.close()


def test_lsl_photodiode_onsets_and_missing_edge(lsl_pair):
    spikes_out, markers_out, tag = lsl_pair
    frame = 1 / 60
    src = connect(tag, photodiode=True, frame_s=frame)
    assert spikes_out.wait_for_consumers(5.0) and markers_out.wait_for_consumers(5.0)
    rng = np.random.default_rng(5)
    base = pylsl.local_clock() + 1.0
    flips = base + 0.25 * np.arange(8)
    pd = flips + 0.012  # photodiode lags the flip by less than a frame
    t, u = spike_train(rng, np.concatenate([pd, flips]), base - 0.3, flips[-1] + 0.3, n=800)
    pipe = CountingPipeline(src, WindowCounter(RESP, BASE, units=UNITS))
    pipe.expect([f"p{k}" for k in range(8)])
    for k, f in enumerate(flips):
        markers_out.push_sample([format_marker(f"p{k}")], float(f))
    events = [(ti, UNITS[ui].split(":")) for ti, ui in zip(t, u)]
    events += [(p, ("-2", "0")) for k, p in enumerate(pd) if k != 3]  # p3's edge never comes
    for ti, (ch, unit) in sorted(events):
        spikes_out.push_sample([int(ch), int(unit)], float(ti))
    spikes_out.push_sample([-1, -1], float(flips[-1] + 1.0))
    out = {pc.presentation_id: pc for pc in run_until(pipe, 8)}
    assert len(out) == 8
    for k in range(8):
        pc = out[f"p{k}"]
        if k == 3:
            assert not pc.valid and pc.onset_source == "flip"
            assert any("no photodiode edge" in r for r in pc.qc_reasons)
            assert pc.onset_rig_s == pytest.approx(flips[3], abs=1e-3)
        else:
            assert pc.valid and pc.onset_source == "photodiode" and pc.qc_reasons == ()
            assert pc.onset_rig_s == pytest.approx(pd[k], abs=1e-3)
        assert pc.counts == expected(t, u, pc.onset_rig_s, RESP)
        assert pc.baseline_counts == expected(t, u, pc.onset_rig_s, BASE)
    src.close()


def test_lsl_recording_identity_names_each_streams_source_id_and_host(lsl_pair):
    """What `snslab bridge` stores with the session (issue 14): the LSL streams' own identity, so the raw
    recording (e.g. an XDF file of the same streams) can be found later; plus what the operator states."""
    import socket

    from recording_bridge.provenance import clock_model, recording_identity

    _, _, tag = lsl_pair
    src = connect(tag)
    try:
        ident = recording_identity(src, {"xdf": "D:/rec/m1.xdf"})
        clock = clock_model(src)
    finally:
        src.close()
    assert ident["adapter"] == "lsl" and ident["stated.xdf"] == "D:/rec/m1.xdf"
    assert ident["spikes.source_id"] == f"s-{tag}" and ident["markers.source_id"] == f"m-{tag}"
    assert ident["spikes.name"] == f"test-spikes-{tag}"
    assert ident["spikes.hostname"] == socket.gethostname() == ident["markers.hostname"]
    assert clock["kind"] == "lsl-time-correction" and "spikes_correction_s" in clock
