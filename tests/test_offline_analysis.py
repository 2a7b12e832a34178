"""Offline analysis of a stored session (issue 14), through the `snslab` command in its own process:
recount from raw spike times, counterfactual rescoring on another stage; originals are never touched."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from spike_fixtures import spike_session  # noqa: F401

pytest_plugins = ["db_fixtures"]

# every table holding a session's original rows, each with the SQL that selects that session's rows
ORIGINAL = {
    "sessions": "SELECT t.* FROM sessions t WHERE t.id = :s",
    "units": "SELECT t.* FROM units t WHERE t.session_id = :s",
    "generations": "SELECT t.* FROM generations t WHERE t.session_id = :s",
    "presentations": "SELECT t.* FROM presentations t WHERE t.session_id = :s",
    "stimuli": "SELECT DISTINCT t.* FROM stimuli t JOIN presentations p ON p.stimulus_id = t.id WHERE p.session_id = :s",
    "responses": "SELECT t.* FROM responses t JOIN presentations p ON p.id = t.presentation_id WHERE p.session_id = :s",
    "scores": "SELECT t.* FROM scores t JOIN presentations p ON p.id = t.presentation_id WHERE p.session_id = :s",
    "events": "SELECT t.* FROM events t WHERE t.session_id = :s",
    "spike_trains": "SELECT t.* FROM spike_trains t JOIN presentations p ON p.id = t.presentation_id"
                    " WHERE p.session_id = :s",
    "recordings": "SELECT t.* FROM recordings t WHERE t.session_id = :s",
}


def fingerprint(engine, sid) -> dict[str, tuple[int, str]]:
    """(row count, md5 of the rows' text in a fixed order) per table."""
    out = {}
    with engine.connect() as c:
        for name, sql in ORIGINAL.items():
            out[name] = tuple(c.execute(text(
                f"SELECT count(*), coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), '') FROM ({sql}) r"),
                {"s": sid}).one())
    return out


def stored_trains(engine, sid) -> dict[int, tuple[float, list[np.ndarray]]]:
    """Spike trains decoded here from the documented storage format: int32/int64 little-endian ns after
    onset, unit after unit, n[u] per unit."""
    with engine.connect() as c:
        rows = c.execute(text("SELECT t.presentation_id, t.n, t.time_bytes, t.times FROM spike_trains t"
                              " JOIN presentations p ON p.id = t.presentation_id WHERE p.session_id = :s"),
                         {"s": sid}).all()
    out = {}
    for pid, n, tb, blob in rows:
        flat = np.frombuffer(bytes(blob), dtype={4: "<i4", 8: "<i8"}[tb])
        out[pid] = np.split(flat, np.cumsum(n)[:-1])
    return out


def analysis_rows(engine, aid) -> dict[int, tuple]:
    with engine.connect() as c:
        return {r[0]: r[1:] for r in c.execute(text(
            "SELECT presentation_id, counts, baseline_counts, distances, front_index, selected FROM analysis_results"
            " WHERE analysis_id = :a"), {"a": aid}).all()}


def _aid(stdout: str) -> int:
    first = stdout.strip().splitlines()[0]
    assert first.startswith("analysis "), stdout
    return int(first.split()[1].rstrip(":"))


def test_recount_with_the_online_window_reproduces_the_stored_counts(spike_session):
    s = spike_session
    before = fingerprint(s.engine, s.session_id)
    res = s.snslab("recount", str(s.session_id), "--window", "50:200", "--baseline=-50:0")
    assert res.returncode == 0, res.stderr
    aid = _aid(res.stdout)
    got = analysis_rows(s.engine, aid)
    with s.engine.connect() as c:
        stored = {r[0]: (r[1], r[2]) for r in c.execute(text(
            "SELECT r.presentation_id, r.counts, r.baseline_counts FROM responses r JOIN presentations p"
            " ON p.id = r.presentation_id WHERE p.session_id = :s"), {"s": s.session_id}).all()}
    assert len(stored) >= 24 and set(got) == set(stored)
    assert {pid: (g[0], g[1]) for pid, g in got.items()} == stored
    assert sum(c[0] for c, _ in stored.values()) > 0  # not a session of zeros
    assert f"{len(stored)} of {len(stored)} presentations reproduce the stored counts exactly" in res.stdout
    assert fingerprint(s.engine, s.session_id) == before


def test_recount_with_another_window_matches_counts_from_the_stored_spike_times(spike_session):
    s = spike_session
    before = fingerprint(s.engine, s.session_id)
    res = s.snslab("recount", str(s.session_id), "--window", "60:220", "--baseline", "-120:-20", "-q")
    assert res.returncode == 0, res.stderr
    got = analysis_rows(s.engine, _aid(res.stdout))
    trains = stored_trains(s.engine, s.session_id)
    assert set(got) == set(trains)
    differs = 0
    for pid, units in trains.items():
        expect = [int(((t >= 60_000_000) & (t < 220_000_000)).sum()) for t in units]
        expect_b = [int(((t >= -120_000_000) & (t < -20_000_000)).sum()) for t in units]
        assert (got[pid][0], got[pid][1]) == (expect, expect_b), pid
    with s.engine.connect() as c:
        online = dict(c.execute(text("SELECT r.presentation_id, r.counts FROM responses r JOIN presentations p"
                                     " ON p.id = r.presentation_id WHERE p.session_id = :s"),
                                {"s": s.session_id}).all())
    differs = sum(online[pid] != got[pid][0] for pid in got)
    assert differs > 0  # another window really counts other spikes
    assert fingerprint(s.engine, s.session_id) == before
    with s.engine.connect() as c:
        kind, params = c.execute(text("SELECT kind, params FROM analyses ORDER BY id DESC LIMIT 1")).one()
    assert kind == "recount" and params == {"window_ms": [60.0, 220.0], "baseline_ms": [-120.0, -20.0]}


@pytest.mark.parametrize("args, message", [
    (["--window", "220:60"], "error: window: '220:60': START must be before END (allowed: e.g. 60:220)"),
    (["--window", "60-220"], "error: window: '60-220' is not START:END in ms (allowed: e.g. 60:220 or -60:0)"),
    (["--window", "60:900"], "error: window: 60:900 ms reaches beyond the stored spike times (allowed: within -200:500 ms)"),
])
def test_recount_refuses_bad_windows_in_one_line(spike_session, args, message):
    res = spike_session.snslab("recount", str(spike_session.session_id), *args, "-q")
    assert res.returncode == 2 and res.stderr.strip() == message, res.stderr
