"""In-process checks of the rig path's pieces (the end-to-end tests are in test_e2e_rig.py): unit keys on the
wire, faults and deadlines deciding validity, the software frame clock, de-duplicated warnings."""

import logging

import pytest

from recording_bridge.base import Fault, Onset, SpikeEvent
from recording_bridge.windows import WindowCounter
from snslab_common.rejections import RejectionLog
from stimulus_client.display import FrameClock
from wire.messages import CountsBatch, ProtocolError
from wire.units import unit_key, unit_name


@pytest.mark.parametrize("name, key", [
    ("Electrode 1:1", "Electrode%201:1"), ("sim:0", "sim:0"), ("100%", "100%25"), ("CA1/tetrode 3#2", "CA1/tetrode%203%232"),
    ("Ä", "%C3%84"), ("a~b", "a%7Eb"),
])
def test_unit_keys_are_one_reversible_percent_encoding(name, key):
    assert unit_key(name) == key and unit_name(key) == name


def test_counts_batch_takes_unit_keys_not_raw_names():
    item = {"presentation_id": "1", "counts": [3], "onset_source": "ttl", "valid": True}
    assert CountsBatch(seq=1, units=[unit_key("Electrode 1:1")], items=[item]).units == ["Electrode%201:1"]
    with pytest.raises(ValueError):
        CountsBatch(seq=1, units=["Electrode 1:1"], items=[item])
    with pytest.raises((ValueError, ProtocolError)):
        unit_name("Electrode 1")


def _counter():
    wc = WindowCounter(response=(0.05, 0.2), baseline=(-0.05, 0.0))  # units discovered from the data
    for pid, onset in (("a", 10.0), ("b", 11.0), ("c", 12.0)):
        wc.add_onset(Onset(pid, onset, "photodiode"))
    return wc


def test_a_fault_in_a_window_makes_that_presentation_invalid_with_its_reason():
    wc = _counter()
    wc.add_spikes([SpikeEvent("u 1", 10.05), SpikeEvent("u 1", 11.2), SpikeEvent("u 2", 12.1999)])
    wc.add_fault(Fault(11.1, 11.1, "late spike: 30 ms behind"))  # inside b's response window
    wc.add_fault(Fault(12.2, 13.0, "data gap: no rig data for 0.80 s"))  # starts on c's end edge: outside
    got = {pc.presentation_id: pc for pc in wc.ready(20.0)}
    assert got["a"].valid and got["a"].counts == {"u 1": 1, "u 2": 0}
    assert not got["b"].valid and got["b"].qc_reasons == ("late spike: 30 ms behind",)
    assert got["c"].valid and got["c"].counts == {"u 1": 0, "u 2": 1}  # [onset + 50, onset + 200) ms
    assert wc.fault_counts == {"late spike": 1}


def test_a_spike_after_the_watermark_invalidates_the_pending_window_it_falls_in():
    wc = _counter()
    assert wc.ready(10.1) == []  # nothing due; the watermark is now 10.1
    wc.add_spikes([SpikeEvent("u 1", 10.07)])  # behind the watermark, inside a's response window
    (a,) = wc.ready(10.2)
    assert not a.valid and a.qc_reasons[0].startswith("late spike") and wc.late_spikes == 1


def test_a_deadline_sends_a_window_the_data_never_reached_as_invalid():
    wc = _counter()
    assert wc.expire("b", "no rig data for the window within 5 s")
    out = {pc.presentation_id: pc for pc in wc.ready(10.3)}  # a is due; b goes out at once; c waits
    assert set(out) == {"a", "b"} and out["a"].valid
    assert not out["b"].valid and out["b"].qc_reasons == ("no rig data for the window within 5 s",)
    assert out["b"].onset_rig_s == 11.0 and wc.pending_ids == ["c"]


def test_software_frame_clock_ticks_at_the_rate_and_restarts_after_a_stall():
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    fc = FrameClock(50.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        fc.wait()
        now[0] += 0.001  # drawing takes 1 ms
    assert slept == pytest.approx([0.019, 0.019, 0.019])  # flips 20 ms apart
    now[0] += 0.5  # a stall: more than a frame behind
    fc.wait()
    assert len(slept) == 3 and fc.next == pytest.approx(now[0] + 0.02)  # no burst of catch-up flips


def test_one_warning_is_logged_a_few_times_not_once_per_presentation(caplog):
    rej = RejectionLog(logging.getLogger("t"), "sim", per_shape=3)
    with caplog.at_level(logging.WARNING):
        for pid in range(200):
            rej(f"presentation {pid}: key given but no count_seed; counts are not keyed", "key")
        rej("presentation 'x': image shape (2, 2) is not (H, W, 3)", "presentation")
    lines = caplog.text.splitlines()
    assert sum("count_seed" in ln for ln in lines) == 3 and sum("image shape" in ln for ln in lines) == 1
    assert rej.counts["key"] == 200
