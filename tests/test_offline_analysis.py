"""Offline analysis of a stored session (issue 14), through the `snslab` command in its own process:
recount from raw spike times, counterfactual rescoring on another stage; originals are never touched."""

from __future__ import annotations

import struct

import subprocess
import sys
from pathlib import Path

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
    """Spike trains decoded here, one spike at a time, from the documented storage format (ns after onset,
    unit after unit, n[u] per unit): time_bytes 4/8 little-endian int32/int64 ns; 2 whole microseconds as
    uint16 steps from the window start (0xFFFF: the time follows as int32 after all the steps)."""
    with engine.connect() as c:
        rows = c.execute(text("SELECT t.presentation_id, t.n, t.time_bytes, t.times, t.start_ms FROM spike_trains t"
                              " JOIN presentations p ON p.id = t.presentation_id WHERE p.session_id = :s"),
                         {"s": sid}).all()
    out = {}
    for pid, n, tb, blob, start_ms in rows:
        blob = bytes(blob)
        if tb == 2:
            steps = struct.unpack_from(f"<{sum(n)}H", blob)
            escaped = iter(struct.unpack_from(f"<{steps.count(0xFFFF)}i", blob, 2 * sum(n)))
            flat, k = [], 0
            for count in n:
                t = round(start_ms * 1000)
                for _ in range(count):
                    t = next(escaped) if steps[k] == 0xFFFF else t + steps[k]
                    flat.append(t * 1000)
                    k += 1
            flat = np.array(flat, dtype=np.int64)
        else:
            flat = np.frombuffer(blob, dtype={4: "<i4", 8: "<i8"}[tb])
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


META = ["--species", "Macaca mulatta", "--age", "P6Y", "--sex", "M", "--lab", "V1 lab",
        "--institution", "Example University", "--experimenter", "Doe, Jane"]


@pytest.fixture(scope="module")
def exported(spike_session, tmp_path_factory):
    """`snslab export --nwb --csv` of the module's session: (nwb path, csv dir, fingerprint before, stdout)."""
    s = spike_session
    tmp = tmp_path_factory.mktemp("export")
    before = fingerprint(s.engine, s.session_id)
    res = s.snslab("export", str(s.session_id), "--nwb", str(tmp / "session.nwb"), *META, "--csv", str(tmp / "csv"))
    assert res.returncode == 0, res.stderr
    return tmp / "session.nwb", tmp / "csv", before, res.stdout


def test_export_nwb_passes_the_dandi_inspection_and_reads_back(spike_session, exported, tmp_path):
    import json
    from io import BytesIO

    from PIL import Image
    from pynwb import NWBHDF5IO

    s = spike_session
    out, csv_dir, before, stdout = exported
    assert stdout.startswith(f"wrote {out}: ")
    report = tmp_path / "inspector.json"
    insp = subprocess.run([str(Path(sys.executable).parent / "nwbinspector"), str(out), "--config", "dandi",
                           "--json-file-path", str(report), "--progress-bar", "False"],
                          capture_output=True, text=True, timeout=300)
    assert insp.returncode == 0 and report.exists(), insp.stdout + insp.stderr
    messages = json.loads(report.read_text())["messages"]
    bad = [m for m in messages if m["importance"] in ("CRITICAL", "BEST_PRACTICE_VIOLATION", "ERROR", "PYNWB_VALIDATION")]
    assert bad == [], bad

    with s.engine.connect() as c:
        pres = {r.id: r for r in c.execute(text(
            "SELECT p.id, g.index AS generation, p.kind, p.valid, p.rig_onset, p.onset_source, r.counts, st.data"
            " FROM presentations p JOIN generations g ON g.id = p.generation_id JOIN stimuli st ON st.id = p.stimulus_id"
            " LEFT JOIN responses r ON r.presentation_id = p.id"
            " WHERE p.session_id = :s AND p.rig_onset IS NOT NULL"), {"s": s.session_id}).all()}
    trains = stored_trains(s.engine, s.session_id)
    with NWBHDF5IO(str(out), "r") as io:
        f = io.read()
        assert f.subject.species == "Macaca mulatta" and f.subject.age == "P6Y" and f.session_id == str(s.session_id)
        t0 = json.loads(f.notes)["rig_clock_t0_s"]
        table = f.intervals["stimulus_presentations"].to_dataframe()
        images = f.stimulus_template["stimuli"]
        order = list(images.order_of_images.data)
        shown = f.stimulus["presented_images"]
        assert set(table.presentation_id) == set(pres) and len(table) == len(pres)
        for row in table.itertuples():
            p = pres[row.presentation_id]
            assert (row.generation, row.kind, row.valid, row.onset_source) == (p.generation, p.kind, p.valid,
                                                                                p.onset_source)
            assert abs(row.start_time + t0 - p.rig_onset) < 1e-9
            assert list(row.online_counts) == list(p.counts)
            expect = np.asarray(Image.open(BytesIO(p.data)).convert("RGB"))
            assert np.array_equal(np.asarray(order[row.image_index].data), expect)
        assert np.array_equal(np.asarray(shown.data), table.sort_values("start_time").image_index.to_numpy())
        assert np.allclose(np.asarray(shown.timestamps), np.sort(table.start_time.to_numpy()))
        spikes = np.asarray(f.units["spike_times"][0])
        for pid, units in trains.items():
            onset = pres[pid].rig_onset - t0
            inside = spikes[(spikes >= onset - 0.2 - 1e-8) & (spikes < onset + 0.5 - 1e-8)]
            assert len(inside) == len(units[0]), pid
            # a spike in two windows is exported once, as its latest stored copy: each copy is the true time
            # floored to a whole microsecond after its own onset, so it is this one or up to 1 us later
            late = inside - onset - units[0] * 1e-9
            assert late.min(initial=0) > -5e-9 and late.max(initial=0) < 1e-6 + 5e-9
        scores = f.processing["optimizer"]["scores"].to_dataframe()
        assert len(scores) > 0 and (scores.front_index >= 0).all()
        assert len(f.processing["optimizer"]["selection"]) == 1

    rows = (csv_dir / "presentations.csv").read_text().splitlines()
    with s.engine.connect() as c:
        n_all = c.execute(text("SELECT count(*) FROM presentations WHERE session_id = :s"), {"s": s.session_id}).scalar()
    assert len(rows) == 1 + n_all  # one unit
    assert fingerprint(s.engine, s.session_id) == before


def test_rescore_on_another_stage_creates_one_analysis_and_touches_no_original_row(spike_session):
    s = spike_session
    before = fingerprint(s.engine, s.session_id)
    with s.engine.connect() as c:
        n_before = c.execute(text("SELECT count(*) FROM analyses WHERE session_id = :s"), {"s": s.session_id}).scalar()
    res = s.snslab("rescore", str(s.session_id), "--stage", "gabor-energy", "--stage-param", "size=16",
                   "--stage-param", "wavelengths=[4, 8]")
    assert res.returncode == 0, res.stderr
    print(res.stdout)
    aid = _aid(res.stdout)
    assert fingerprint(s.engine, s.session_id) == before
    with s.engine.connect() as c:
        n_after = c.execute(text("SELECT count(*) FROM analyses WHERE session_id = :s"), {"s": s.session_id}).scalar()
        kind, params, summary = c.execute(text("SELECT kind, params, summary FROM analyses WHERE id = :a"),
                                          {"a": aid}).one()
        stored = {r[0]: (r[1], r[2]) for r in c.execute(text(
            "SELECT sc.presentation_id, sc.distances, sc.front_index FROM scores sc JOIN presentations p"
            " ON p.id = sc.presentation_id WHERE p.session_id = :s"), {"s": s.session_id}).all()}
    assert n_after == n_before + 1 and kind == "rescore" and params["stage"] == "gabor-energy"
    got = analysis_rows(s.engine, aid)
    assert set(got) == set(stored)
    for pid, (dist, front, selected) in ((p, g[2:5]) for p, g in got.items()):
        assert set(dist) == {"gabor-energy", "unit"} and front >= 0
        # same counts, same running reference response: the unit's distance is the one scored online
        assert abs(dist["unit"] - stored[pid][0]["unit"]) < 1e-9
    assert sum(g[4] for g in got.values()) == 1  # one selected image
    assert summary["scored"] == len(stored) and "first fronts:" in res.stdout and "selected rescored:" in res.stdout


def test_rescore_with_recounted_responses_uses_them(spike_session):
    s = spike_session
    rc = s.snslab("recount", str(s.session_id), "--window", "40:240", "-q")
    assert rc.returncode == 0, rc.stderr
    rec = _aid(rc.stdout)
    res = s.snslab("rescore", str(s.session_id), "--stage", "pixel", "--counts", str(rec), "-q")
    assert res.returncode == 0, res.stderr
    aid = _aid(res.stdout)
    with s.engine.connect() as c:
        link = c.execute(text("SELECT counts_analysis_id FROM analyses WHERE id = :a"), {"a": aid}).scalar()
    assert link == rec
    recounted = analysis_rows(s.engine, rec)
    got = analysis_rows(s.engine, aid)
    # the unit distance is recomputed here from the recounted counts: |rate - running mean reference rate|
    with s.engine.connect() as c:
        rows = c.execute(text(
            "SELECT p.id, g.index, p.kind, p.superseded FROM presentations p JOIN generations g ON g.id = p.generation_id"
            " WHERE p.session_id = :s ORDER BY g.index"), {"s": s.session_id}).all()
    window_s = 0.2
    ref_rates, expect = [], {}
    for g in sorted({r[1] for r in rows}):
        ref_rates += [recounted[r[0]][0][0] / window_s for r in rows if r[1] == g and r[2] == "reference"
                      and not r[3] and r[0] in recounted]
        for r in rows:
            if r[1] == g and r[0] in got:
                expect[r[0]] = abs(recounted[r[0]][0][0] / window_s - np.mean(ref_rates))
    assert {p: round(got[p][2]["unit"], 9) for p in got} == {p: round(v, 9) for p, v in expect.items()}


def test_rescore_refuses_an_unknown_stage_in_one_line(spike_session):
    res = spike_session.snslab("rescore", str(spike_session.session_id), "--stage", "v4", "-q")
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: stage: unknown stage 'v4' (allowed: cnn:ARCH:LAYER, gabor-energy, "
                                  "pixel)"), res.stderr


def test_nwb_replay_adapter_through_server_display_and_bridge_gives_the_same_counts(spike_session, exported,
                                                                                      tmp_path):
    """The exported file played back by `snslab bridge --adapter nwb` (its own process) to a new session with
    the stored session's config: the loop re-runs the same presentations and gets the same counts."""
    import os
    import time

    from server.service import SessionCreate, SessionService
    from test_live_loop import FAST, ScriptedDisplay

    s = spike_session
    out = exported[0]
    with s.engine.connect() as c:
        config = c.execute(text("SELECT config FROM sessions WHERE id = :s"), {"s": s.session_id}).scalar()
    ref = tmp_path / "ref.npy"
    np.save(ref, np.array(config["reference_code"], dtype=np.float64))
    spec = SessionCreate.model_validate(config["session"] | {"reference": {"source": "code", "path": str(ref)}})

    service = SessionService(s.repo, bind="tcp://127.0.0.1:*", timing=FAST)
    display = ScriptedDisplay(service.wire_address, client_id="replay-display")
    log = open(tmp_path / "bridge.log", "w")
    bridge = subprocess.Popen([sys.executable, "-m", "server.cli", "bridge", "--server", service.wire_address,
                               "--adapter", "nwb", "--param", f"path={out}", "--param", "speed=0",
                               "--client-id", "replay-bridge"], cwd=Path(__file__).resolve().parents[1],
                              env=s.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                c["client_id"] == "replay-bridge" and c["alive"] for c in service.clients()):
            time.sleep(0.05)
        sid = service.create(spec)
        service.start(sid)
        assert service.wait(sid, 120.0), f"{service.loop.stats}\n{(tmp_path / 'bridge.log').read_text()[-3000:]}"
    finally:
        bridge.terminate()
        bridge.wait(20)
        log.close()
        display.close()
        service.close()

    def counts(session):
        with s.engine.connect() as c:
            return {(g, o, a): (list(cn), list(b)) for g, o, a, cn, b in c.execute(text(
                "SELECT g.index, p.order_in_batch, p.attempt, r.counts, r.baseline_counts FROM responses r"
                " JOIN presentations p ON p.id = r.presentation_id JOIN generations g ON g.id = p.generation_id"
                " WHERE p.session_id = :s"), {"s": session}).all()}

    original, replayed = counts(s.session_id), counts(sid)
    assert len(original) >= 24 and replayed == original
    with s.engine.connect() as c:
        reasons = c.execute(text("SELECT DISTINCT unnest(qc_reasons) FROM presentations WHERE session_id = :s"),
                            {"s": sid}).scalars().all()
    assert "replayed from session.nwb" in reasons


def test_replay_reports_progress_per_generation(spike_session):
    from server.stored import replay

    calls = []
    rep = replay(spike_session.repo, spike_session.session_id, progress=lambda done, total: calls.append((done, total)))
    assert rep.identical and rep.generations == 3
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    res = spike_session.snslab("replay", str(spike_session.session_id))
    assert res.returncode == 0 and "replayed 3 generations" in res.stdout, res.stderr


def test_export_refuses_missing_dandi_metadata_in_one_line(spike_session, tmp_path):
    res = spike_session.snslab("export", str(spike_session.session_id), "--nwb", str(tmp_path / "x.nwb"),
                               "--age", "P6Y", "--lab", "l", "--institution", "i", "-q")
    assert res.returncode == 2 and not (tmp_path / "x.nwb").exists()
    assert res.stderr.strip() == ("error: species: None is not a Latin binomial (required by DANDI) "
                                  "(allowed: e.g. 'Macaca mulatta', 'Mus musculus')"), res.stderr
    meta = tmp_path / "subject.toml"
    meta.write_text('species = "Macaca mulatta"\nage = "six years"\nlab = "l"\ninstitution = "i"\n')
    res = spike_session.snslab("export", str(spike_session.session_id), "--nwb", str(tmp_path / "x.nwb"),
                               "--metadata", str(meta), "-q")
    assert res.returncode == 2 and res.stderr.startswith("error: age: 'six years' is not an ISO 8601 duration"), res.stderr
