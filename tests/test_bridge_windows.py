"""WindowCounter: exact half-open counting, watermark gating, bounded memory; PresentationCounts checks."""

import logging
import math

import numpy as np
import pytest

from recording_bridge.base import Onset, SpikeEvent
from recording_bridge.windows import PresentationCounts, WindowCounter
from server.engine.base import ConfigError

U = "1:1"


def spikes(unit, times):
    return [SpikeEvent(unit, float(t)) for t in times]


def test_window_edges_start_counted_end_not():
    onset = 10.0
    wc = WindowCounter(units=[U])
    wc.add_onset(Onset("p1", onset, "photodiode"))
    wc.add_spikes(
        spikes(U, [onset + x for x in (0.050, 0.200, 0.1, 0.0499999, -0.050, 0.0, -0.0500001)])
    )
    (pc,) = wc.ready(onset + 0.2)
    # response [50, 200): 10.05 and 10.1 in; 10.2 (end) and 10.0499999 out
    assert pc.counts == {U: 2}
    # baseline [-50, 0): 9.95 (start) in; 10.0 (end) and 9.9499999 out
    assert pc.baseline_counts == {U: 1}
    assert pc.window == (50.0, 200.0) and pc.baseline_window == (-50.0, 0.0)
    assert pc.valid and pc.onset_source == "photodiode" and not pc.flagged


def test_edges_exact_with_sample_clock_rounding():
    # Open Ephys times are sample / rate; the edge computed as onset + 0.05 may differ by an ulp.
    fs = 30000.0
    wc = WindowCounter(units=[U])
    starts = [123457, 999983, 7, 3141592]
    for i, s0 in enumerate(starts):
        wc.add_onset(Onset(f"p{i}", s0 / fs, "ttl"))
        wc.add_spikes(spikes(U, [(s0 + 1500) / fs, (s0 + 6000) / fs, (s0 - 1500) / fs, s0 / fs]))
    out = {pc.presentation_id: pc for pc in wc.ready(1e9)}
    for i in range(len(starts)):
        assert out[f"p{i}"].counts == {U: 1}  # +1500 samples in, +6000 samples (window end) out
        assert out[f"p{i}"].baseline_counts == {U: 1}  # -1500 in, 0 (baseline end) out


def test_watermark_gating_never_early_and_emitted_once():
    wc = WindowCounter(units=[U], response=(0.05, 0.2), baseline=(-0.05, 0.0))
    wc.add_onset(Onset("a", 1.0, "ttl"))
    wc.add_onset(Onset("b", 1.25, "ttl"))
    wc.add_spikes(spikes(U, [1.06, 1.3, 1.31]))
    assert wc.ready(1.1999) == []
    assert [pc.presentation_id for pc in wc.ready(1.2)] == ["a"]
    assert wc.ready(1.2) == []
    # a watermark that goes back does not re-emit or un-gate anything
    assert wc.ready(0.5) == []
    assert wc.pending_ids == ["b"]
    wc.add_spikes(spikes(U, [1.44]))
    (b,) = wc.ready(1.45)
    assert b.counts == {U: 3} and b.baseline_counts == {U: 0}


def test_baseline_end_beyond_response_gates_too():
    wc = WindowCounter(units=[U], response=(0.05, 0.1), baseline=(0.1, 0.3))
    wc.add_onset(Onset("a", 0.0, "ttl"))
    assert wc.ready(0.2) == []
    assert len(wc.ready(0.3)) == 1


def test_unordered_spikes_count_the_same():
    rng = np.random.default_rng(3)
    t = rng.uniform(0, 5, size=2000)
    onsets = np.arange(0.2, 4.6, 0.25)

    def run(order):
        wc = WindowCounter(units=["a:0", "b:0"])
        for i, o in enumerate(onsets):
            wc.add_onset(Onset(f"p{i}", float(o), "ttl"))
        ev = spikes("a:0", t[order]) + spikes("b:0", t[order][order % 2 == 0])
        for chunk in np.array_split(np.arange(len(ev)), 7):
            wc.add_spikes([ev[j] for j in chunk])
        return [(pc.counts, pc.baseline_counts) for pc in wc.ready(10.0)]

    sorted_run = run(np.argsort(t))
    shuffled = run(rng.permutation(len(t)))
    assert sorted_run == shuffled
    expected = [int(np.sum((t >= o + 0.05) & (t < o + 0.2))) for o in onsets]
    assert [c["a:0"] for c, _ in sorted_run] == expected
    assert sum(expected) > 100


def test_memory_is_pruned_to_pending_windows_and_retain():
    wc = WindowCounter(units=[U], retain_s=0.5)
    for k in range(200):  # 200 s of 100 Hz spikes, one presentation per second
        t0 = float(k)
        wc.add_onset(Onset(f"p{k}", t0 + 0.5, "ttl"))
        wc.add_spikes(spikes(U, t0 + np.arange(100) / 100.0))
        out = wc.ready(t0 + 1.0)
        assert len(out) == 1 and out[0].counts == {U: 15}
        assert wc.n_buffered_spikes <= 100  # only the last 0.5 s + the current second's tail
    assert wc.discarded_before == pytest.approx(199.5)


def test_pending_window_keeps_its_spikes_even_if_old():
    wc = WindowCounter(units=[U], retain_s=0.0)
    wc.add_onset(Onset("slow", 1.0, "ttl"))
    wc.add_spikes(spikes(U, [0.96, 1.1]))
    # the watermark can't pass "slow" without emitting it, so nothing it needs is dropped before
    (pc,) = wc.ready(5.0)
    assert pc.counts == {U: 1} and pc.baseline_counts == {U: 1}
    assert wc.n_buffered_spikes == 0


def test_late_onset_rejected_with_reason(caplog):
    wc = WindowCounter(units=[U], retain_s=1.0)
    wc.add_spikes(spikes(U, [1.0, 2.0, 3.0]))
    wc.ready(10.0)
    with caplog.at_level(logging.WARNING):
        assert not wc.add_onset(Onset("late", 8.5, "ttl"))
    assert "late" in caplog.text and "discarded" in caplog.text
    assert wc.add_onset(Onset("ok", 9.1, "ttl"))


def test_duplicate_and_nonfinite_input_rejected(caplog):
    wc = WindowCounter(units=[U])
    assert wc.add_onset(Onset("p", 1.0, "ttl"))
    with caplog.at_level(logging.WARNING):
        assert not wc.add_onset(Onset("p", 1.5, "ttl"))
        assert wc.add_spikes([SpikeEvent(U, float("nan")), SpikeEvent(U, 1.1), SpikeEvent("other:1", 1.1)]) == 1
    assert "duplicate" in caplog.text and "not finite" in caplog.text and "other:1" in caplog.text
    (pc,) = wc.ready(2.0)
    assert pc.counts == {U: 1}


def test_invalid_onset_without_time_is_emitted_at_once():
    wc = WindowCounter(units=[U])
    wc.add_onset(Onset("x", None, "none", valid=False, qc_reasons=("no TTL",)))
    (pc,) = wc.ready(-math.inf)
    assert not pc.valid and pc.counts == {} and pc.qc_reasons == ("no TTL",) and pc.flagged


def test_dynamic_units_include_zero_counts():
    wc = WindowCounter()
    wc.add_spikes(spikes("a:1", [0.5]) + spikes("b:2", [1.1]))
    wc.add_onset(Onset("p", 1.0, "flip", qc_reasons=("flip",)))
    (pc,) = wc.ready(1.2)
    assert pc.counts == {"a:1": 0, "b:2": 1}


def test_bad_windows_are_config_errors():
    with pytest.raises(ConfigError, match="response"):
        WindowCounter(response=(0.2, 0.05))
    with pytest.raises(ConfigError, match="baseline"):
        WindowCounter(baseline=(0.0, float("nan")))


@pytest.mark.parametrize(
    "counts, match",
    [
        ({U: float("nan")}, "not finite"),
        ({U: -1}, "negative"),
        ({U: 1.5}, "whole number"),
        ({U: True}, "boolean"),
        ({U: "3"}, "not an integer"),
        ([1, 2], "mapping"),
    ],
)
def test_presentation_counts_reject_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        PresentationCounts("p", "s", 1.0, "ttl", True, (), counts, {U: 0} if isinstance(counts, dict) else {})


def test_presentation_counts_round_trip_and_checks():
    pc = PresentationCounts("p", "s", 1.0, "photodiode", True, ("x",), {U: np.int64(3)}, {U: 2.0})
    assert pc.counts == {U: 3} and type(pc.counts[U]) is int and pc.baseline_counts == {U: 2}
    assert PresentationCounts.from_dict(pc.to_dict()) == pc
    with pytest.raises(ValueError, match="missing field"):
        PresentationCounts.from_dict({"presentation_id": "p"})
    with pytest.raises(ValueError, match="different units"):
        PresentationCounts("p", "s", 1.0, "ttl", True, (), {U: 1}, {"z:0": 1})
    with pytest.raises(ValueError, match="onset_source"):
        PresentationCounts("p", "s", 1.0, "guess", True, (), {}, {})
    with pytest.raises(ValueError, match="need an onset"):
        PresentationCounts("p", "s", None, "none", True, (), {}, {})
