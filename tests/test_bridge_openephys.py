"""Open Ephys source against a real ZMQ publisher sending Event Broadcaster frames on loopback."""

import json
import logging
import struct
import time

import numpy as np
import pytest
import zmq

from recording_bridge.adapters.openephys import OpenEphysSource
from recording_bridge.alignment import ttl_code
from recording_bridge.base import Marker
from recording_bridge.pipeline import CountingPipeline
from recording_bridge.windows import WindowCounter

FS = 30000
UNITS = ["Electrode 1:1", "Electrode 1:2", "Electrode 2:0"]
R0, R1, B0 = 1500, 6000, -1500  # response [50, 200) ms and baseline [-50, 0) ms in samples at 30 kHz


def frame(kind, info):
    return [struct.pack("<H", kind), json.dumps(info).encode()]


def spike(unit, sample):
    electrode, sorted_id = unit.split(":")
    return frame(
        1,
        {"event_type": "spike", "stream": "acq", "source_node": 105, "electrode": electrode, "num_channels": 4,
         "sample_rate": FS, "sample_number": int(sample), "sorted_id": int(sorted_id), "amp1": 80},
    )


def ttl(line, state, sample, with_rate=True):
    info = {"event_type": "ttl", "stream": "acq", "source_node": 101, "channel_name": "TTL",
            "sample_number": int(sample), "line": line, "state": state}
    if with_rate:
        info["sample_rate"] = FS
    return frame(0, info)


@pytest.fixture
def publisher():
    """An Event Broadcaster stand-in: XPUB on a random loopback port, so the test knows when the
    subscriber is connected instead of sleeping."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)  # PUB drops past its high-water mark; the test sends a burst
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    yield pub, f"tcp://127.0.0.1:{port}"
    pub.close(linger=0)
    ctx.term()


def subscribe(pub, endpoint, **kw):
    src = OpenEphysSource(endpoint=endpoint, sample_rate=float(FS), **kw)
    assert pub.poll(10000), "subscriber never connected"
    assert pub.recv() == b"\x01"  # the subscription
    return src


def word_events(code, s, lines, skew=0):
    """Raise the code's bits at sample s (the last bit `skew` samples late), drop them 10 ms later."""
    bits = [lines[i] for i in range(len(lines)) if code >> i & 1]
    late = [skew if j == len(bits) - 1 and j > 0 else 0 for j in range(len(bits))]
    ev = [(s + d, ttl(line, 1, s + d)) for d, line in zip(late, bits)]
    ev += [(s + 300, ttl(line, 0, s + 300)) for line in bits]
    return ev


def expected(spk, s0, lo, hi):
    return {unit: int(np.sum((spk[unit] >= s0 + lo) & (spk[unit] < s0 + hi))) for unit in UNITS}


def make_session(rng, n, s_first=3_000_000, period=7500):
    onsets = s_first + period * np.arange(n)
    spk = {}
    for unit in UNITS:
        s = rng.integers(s_first - 3000, onsets[-1] + 9000, size=500)
        # spikes exactly on every window edge: start edges count, end edges don't
        spk[unit] = np.sort(np.concatenate([s, onsets + R0, onsets + R1, onsets + B0, onsets]))
    return onsets, spk


def drain(pipe, n, seconds=15.0):
    out, deadline = [], time.monotonic() + seconds  # a guard against hanging, not a timing assertion
    while len(out) < n and time.monotonic() < deadline:
        out += pipe.step(timeout_s=0.05)
    return out


def display_time(sample):
    return 500.0 + (sample / FS) * (1 + 1e-5)  # the display's own clock: offset and drift


def test_openephys_ttl_words_counts_exact_and_malformed_frames_rejected(publisher, caplog):
    pub, endpoint = publisher
    rng = np.random.default_rng(4)
    n = 12
    onsets, spk = make_session(rng, n)
    src = subscribe(pub, endpoint)
    pipe = CountingPipeline(src, WindowCounter(units=UNITS, session_id="s"))
    pipe.expect([f"p{k}" for k in range(n)])
    lines = tuple(range(8))
    events = [(int(s), spike(unit, s)) for unit in UNITS for s in spk[unit]]
    for k, s in enumerate(onsets):
        if k != 6:  # p6's TTL word is lost
            events += word_events(ttl_code(k), int(s), lines, skew=5 if k % 3 == 0 else 0)
        pipe.add_marker(Marker(f"p{k}", display_time(s) + rng.normal(0, 2e-4), ttl_code(k)))
    events.sort(key=lambda e: e[0])
    bad = [
        [b"\x01\x00"],
        [b"\x01\x00", b"{}", b"extra"],
        [b"\x01\x00\x00", b"{}"],
        [struct.pack("<H", 7), b"{}"],
        [struct.pack("<H", 1), b"{not json"],
        [struct.pack("<H", 1), b"[1, 2]"],
        frame(1, {"electrode": "Electrode 1", "sorted_id": 1, "sample_rate": FS}),
        [struct.pack("<H", 1), b'{"electrode": "Electrode 1", "sorted_id": 1, "sample_number": NaN}'],
        frame(1, {"electrode": "Electrode 1", "sorted_id": 1, "sample_number": -5}),
        frame(1, {"sorted_id": 1, "sample_number": 3_000_010}),
        frame(0, {"event_type": "spike", "line": 1, "state": 1, "sample_number": 3_000_010}),
        frame(0, {"line": 1, "state": 2, "sample_number": 3_000_010}),
        frame(1, {"electrode": "Electrode 1", "sorted_id": 1.5, "sample_number": 3_000_010}),
    ]
    with caplog.at_level(logging.WARNING):
        for msg in bad[:7]:
            pub.send_multipart(msg)
        for i, (_, msg) in enumerate(events):
            pub.send_multipart(msg)
            if i == len(events) // 2:
                for b in bad[7:]:
                    pub.send_multipart(b)
        pub.send_multipart(ttl(20, 1, onsets[-1] + 3 * FS))  # an unrelated line moves the watermark on
        out = drain(pipe, n)
    reasons = caplog.text
    for needle in ["expected 2 frames", "got 3", "3 bytes", "unknown message type 7", "does not parse",
                   "is a list", "missing field 'sample_number'", "nan is not a whole number", "is below 0",
                   "electrode None", "event_type is 'spike'", "state 2", "1.5 is not a whole number"]:
        assert needle in reasons, needle
    assert src.rejected.counts["frame"] == len(bad)

    assert [pc.presentation_id for pc in out] == [f"p{k}" for k in range(n)]
    for k, pc in enumerate(out):
        s0 = int(onsets[k])
        if k == 6:
            assert pc.onset_source == "flip" and not pc.valid and any("missing TTL word" in r for r in pc.qc_reasons)
            assert pc.onset_rig_s == pytest.approx(s0 / FS, abs=1e-3)  # placed by the clock fit
            continue
        assert pc.onset_source == "ttl" and pc.valid and pc.qc_reasons == ()
        assert pc.onset_rig_s == s0 / FS
        assert pc.counts == expected(spk, s0, R0, R1), k
        assert pc.baseline_counts == expected(spk, s0, B0, 0), k
    assert src.units() == UNITS
    fit = src.aligner.clock  # display -> rig from the 11 TTL/marker pairs (0.2 ms marker jitter)
    assert fit.n == n - 1 and fit.to_rig(display_time(onsets[6])) == pytest.approx(onsets[6] / FS, abs=1e-3)
    src.close()


def test_openephys_photodiode_line_gives_onsets(publisher):
    pub, endpoint = publisher
    rng = np.random.default_rng(9)
    n = 6
    onsets, spk = make_session(rng, n)
    pd_lag = 400  # 13.3 ms after the TTL word
    src = subscribe(pub, endpoint, word_lines=(0, 1, 2, 3, 4, 5, 6), photodiode_line=7)
    pipe = CountingPipeline(src, WindowCounter(units=UNITS))
    pipe.expect([f"p{k}" for k in range(n)])
    # spikes on the photodiode-based window edges
    for unit in UNITS:
        spk[unit] = np.sort(np.concatenate([spk[unit], onsets + pd_lag + R0, onsets + pd_lag + R1]))
    events = [(int(s), spike(unit, s)) for unit in UNITS for s in spk[unit]]
    for k, s in enumerate(onsets):
        events += word_events(ttl_code(k, 7), int(s), (0, 1, 2, 3, 4, 5, 6))
        if k != 2:
            events += [(int(s) + pd_lag, ttl(7, 1, s + pd_lag, with_rate=False)), (int(s) + 3000, ttl(7, 0, s + 3000))]
        pipe.add_marker(Marker(f"p{k}", display_time(s), ttl_code(k, 7)))
    events.sort(key=lambda e: e[0])
    for _, msg in events:
        pub.send_multipart(msg)
    pub.send_multipart(ttl(20, 1, onsets[-1] + 3 * FS))
    out = drain(pipe, n)
    assert [pc.presentation_id for pc in out] == [f"p{k}" for k in range(n)]
    for k, pc in enumerate(out):
        s0 = int(onsets[k])
        if k == 2:
            assert not pc.valid and pc.onset_source == "ttl" and pc.onset_rig_s == s0 / FS
            assert any("no photodiode edge" in r for r in pc.qc_reasons)
        else:
            assert pc.valid and pc.onset_source == "photodiode" and pc.onset_rig_s == (s0 + pd_lag) / FS
        on = round(pc.onset_rig_s * FS)
        assert pc.counts == expected(spk, on, R0, R1), k
        assert pc.baseline_counts == expected(spk, on, B0, 0), k
    src.close()


def test_openephys_counts_wait_for_rig_data_and_reject_backwards_samples(publisher, caplog):
    pub, endpoint = publisher
    src = subscribe(pub, endpoint, lag_s=0.0)
    pipe = CountingPipeline(src, WindowCounter(units=["Electrode 1:1"]))
    pipe.expect(["a"])
    s0 = 600_000
    pipe.add_marker(Marker("a", 42.0, 1))
    u = "Electrode 1:1"
    for msg in [ttl(0, 1, s0), ttl(0, 0, s0 + 300), spike(u, s0 + 1600), spike(u, s0 + 5999)]:
        pub.send_multipart(msg)
    out, deadline = [], time.monotonic() + 15.0
    while src.watermark() < (s0 + 5999) / FS and time.monotonic() < deadline:
        out += pipe.step(timeout_s=0.05)
    out += pipe.step(timeout_s=0.05)
    assert src.watermark() == (s0 + 5999) / FS  # everything arrived: one sample short of the window end
    assert out == []
    with caplog.at_level(logging.WARNING):
        pub.send_multipart(spike("Electrode 1:1", s0 - 30000))  # a second in the past
        pub.send_multipart(spike("Electrode 1:1", s0 + 6000))
        (pc,) = drain(pipe, 1)
    assert caplog.text.count("older than the watermark") == 1
    assert pc.counts == {"Electrode 1:1": 2} and pc.onset_source == "ttl"
    with caplog.at_level(logging.WARNING):
        pub.send_multipart(ttl(0, 0, s0 + 7000))  # line 0 is already low: its rising event was lost
        deadline = time.monotonic() + 15.0
        while src.lost_ttl == 0 and time.monotonic() < deadline:
            pipe.step(timeout_s=0.05)
    assert src.lost_ttl == 1 and "TTL line 0 went 0 twice" in caplog.text
    src.close()
