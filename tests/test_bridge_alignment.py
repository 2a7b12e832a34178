"""Onset alignment: photodiode matching, the rolling clock fit, and the marker/TTL/photodiode aligner."""

import logging

import numpy as np
import pytest

from recording_bridge.alignment import ClockFit, Edge, OnsetAligner, match_photodiode, ttl_code
from recording_bridge.base import Marker
from server.engine.base import ConfigError

F = 1 / 60


def test_photodiode_matched_takes_first_edge_in_window():
    m = match_photodiode([("a", 10.0), ("b", 11.0)], edges=[9.9, 10.0 - F, 10.02, 10.03, 11.0 + 3 * F], frame_s=F)
    assert m[0].edge_s == pytest.approx(10.0 - F) and m[0].reason is None  # window start is inclusive
    assert m[1].edge_s == pytest.approx(11.0 + 3 * F) and m[1].reason is None  # window end is inclusive


def test_photodiode_unmatched():
    (m,) = match_photodiode([("a", 10.0)], edges=[10.0 - 1.01 * F, 10.0 + 3.01 * F], frame_s=F)
    assert m.edge_s is None and "no photodiode edge" in m.reason


def test_photodiode_shared_edge_and_duplicate_marker_invalid():
    flips = [("a", 10.0), ("b", 10.0 + 2 * F), ("c", 11.0), ("c", 11.0)]
    m = match_photodiode(flips, edges=[10.0 + 2.5 * F, 11.01], frame_s=F)
    assert m[0].edge_s == m[1].edge_s
    assert "also the first edge for presentation(s) b" in m[0].reason
    assert "presentation(s) a" in m[1].reason
    assert m[2].reason is not None and "also the first edge" in m[2].reason  # c shares with its repeat
    assert m[3].reason == "duplicate marker for presentation c"


def test_clock_fit_recovers_offset_and_drift():
    rng = np.random.default_rng(0)
    offset, drift = 1234.5678, 3.7e-5  # rig = offset + (1 + drift) * display
    x = 5000.0 + np.sort(rng.uniform(0, 600, size=200))
    y = offset + (1 + drift) * x + rng.normal(0, 2e-4, size=x.size)  # 0.2 ms jitter
    fit = ClockFit(window=64)
    for a, b in zip(x, y):
        fit.add(a, b)
    assert fit.n == 64
    assert fit.drift == pytest.approx(drift, abs=3e-6)
    assert fit.to_rig(5700.0) == pytest.approx(offset + (1 + drift) * 5700.0, abs=1e-3)
    assert fit.residual_sd == pytest.approx(2e-4, rel=0.3)
    one = ClockFit()
    one.add(10.0, 15.0)
    assert one.slope == 1.0 and one.to_rig(11.0) == 16.0
    with pytest.raises(ValueError, match="no pairs"):
        ClockFit().to_rig(1.0)


def test_ttl_code_cycles_without_zero():
    codes = [ttl_code(i) for i in range(600)]
    assert min(codes) == 1 and max(codes) == 255 and codes[0] == 1 and codes[255] == 1


def _rig(x, offset=-700.0, drift=2e-5):
    return offset + (1 + drift) * x


def test_aligner_ttl_words_identify_and_time_flips():
    al = OnsetAligner(ttl=True, frame_s=F)
    flips = [1000.0 + 0.25 * k for k in range(12)]
    for k, f in enumerate(flips):
        al.add_marker(Marker(f"p{k}", f, ttl_code(k)))
    # the rig records words for all but p5, with 0.3 ms jitter
    for k, f in enumerate(flips):
        if k != 5:
            al.add_edge(Edge(_rig(f) + 3e-4 * ((-1) ** k), "ttl", ttl_code(k)))
    got = {o.presentation_id: o for o in al.ready(_rig(flips[-1]) + 1.0)}
    assert set(got) == {f"p{k}" for k in range(12)}
    for k, f in enumerate(flips):
        o = got[f"p{k}"]
        if k == 5:
            # placed by the clock fit, but the rig never saw this flip: invalid, with the reason
            assert o.source == "flip" and not o.valid and any("missing TTL word: no word 6" in r for r in o.qc_reasons)
            assert o.rig_s == pytest.approx(_rig(f), abs=1e-3)
        else:
            assert o.source == "ttl" and o.valid and o.qc_reasons == ()
            assert o.rig_s == pytest.approx(_rig(f) + 3e-4 * ((-1) ** k), abs=1e-12)


def test_aligner_waits_for_the_watermark():
    al = OnsetAligner(ttl=True, photodiode=True, frame_s=F)
    al.add_marker(Marker("a", 50.0, 1))
    al.add_edge(Edge(10.0, "ttl", 1))
    assert al.ready(10.0 + 3 * F - 1e-6) == []  # a photodiode edge may still come
    al.add_edge(Edge(10.0 + F, "photodiode"))
    (o,) = al.ready(10.0 + 3 * F)
    assert o.source == "photodiode" and o.rig_s == pytest.approx(10.0 + F) and o.valid


def test_aligner_photodiode_missing_makes_invalid():
    al = OnsetAligner(markers_on_rig_clock=True, photodiode=True, frame_s=F)
    al.add_marker(Marker("a", 5.0))
    al.add_marker(Marker("b", 5.25))
    al.add_edge(Edge(5.25 + 0.5 * F, "photodiode"))
    got = {o.presentation_id: o for o in al.ready(6.0)}
    assert not got["a"].valid and got["a"].source == "flip" and got["a"].rig_s == 5.0
    assert any("no photodiode edge" in r for r in got["a"].qc_reasons)
    assert got["b"].valid and got["b"].source == "photodiode"


def test_aligner_edge_shared_with_earlier_decision_is_invalid():
    al = OnsetAligner(markers_on_rig_clock=True, photodiode=True, frame_s=F)
    al.add_marker(Marker("a", 5.0))
    al.add_edge(Edge(5.0 + 2 * F, "photodiode"))
    (a,) = al.ready(5.0 + 3 * F)
    assert a.valid
    al.add_marker(Marker("b", 5.0 + F))  # a late marker whose window holds the same edge
    (b,) = al.ready(6.0)
    assert not b.valid and any("already matched to presentation a" in r for r in b.qc_reasons)


def test_aligner_flip_only_is_flagged_and_duplicates_rejected(caplog):
    al = OnsetAligner(markers_on_rig_clock=True)
    assert al.add_marker(Marker("a", 1.0))
    with caplog.at_level(logging.WARNING):
        assert not al.add_marker(Marker("a", 2.0))
        assert not al.add_marker(Marker("b", float("nan")))
    assert "duplicate marker for presentation a" in caplog.text and "not finite" in caplog.text
    assert al.ready(0.99) == []  # decided once the rig data reaches the flip
    (o,) = al.ready(1.0)
    assert o.source == "flip" and o.valid and "no photodiode or TTL" in o.qc_reasons[0]


def test_aligner_without_any_ttl_gives_up_after_a_bound(caplog):
    al = OnsetAligner(ttl=True, max_unplaced=4)
    for k in range(6):
        al.add_marker(Marker(f"p{k}", float(k), ttl_code(k)))
    out = al.ready(100.0)
    assert [o.presentation_id for o in out] == ["p0", "p1"]
    assert all(o.rig_s is None and not o.valid and o.source == "none" for o in out)
    with caplog.at_level(logging.WARNING):
        al.add_edge(Edge(1.0, "ttl", 99))
        al.ready(100.0)
    assert "TTL word 99" in caplog.text and "matched no display marker" in caplog.text


def test_aligner_needs_a_way_onto_the_rig_clock():
    with pytest.raises(ConfigError, match="ttl"):
        OnsetAligner(ttl=False, markers_on_rig_clock=False)
