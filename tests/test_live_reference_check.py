"""The live reference check (issue 12, item 3), run as an operator runs it: ``snslab server`` (PostgreSQL),
``snslab bridge --adapter sim``, a scripted display process and ``snslab session create/show``, each in its
own process.

After a live maximize session's last generation its best image and a blank screen are shown
``reference.check_repeats`` times each as stored presentations (kinds ``reference-check`` / ``blank``):

- a maximize stuck at baseline (a tiny sigma0) ends ``failed`` with the in-silico run's one-line message
  (an error event, shown by ``snslab session show``), and a probe naming it as its reference is refused;
- a maximize that leaves baseline completes, also when the server is killed (SIGKILL) in the middle of the
  check: every check slot is answered exactly once; a probe on it starts with the check's re-measured rates
  as its reference response; ``snslab replay`` reproduces both sessions bit for bit.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from api_fixtures import api_db_url, url_text  # noqa: F401  (fixture)
from live_rig import Rig, session_status
from server_process import ROOT
from waiting import wait_for

pytest_plugins = ["db_fixtures"]

TOKEN = "check-operator-token"
REPEATS = 10
GEN = {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1}
WINDOW = (10.0, 60.0)  # ms: short, so the simulated rig keeps up with a fast display


def _spec(probe: dict, **extra) -> dict:
    return {"operator": "ana", "subject_id": "m12", "rig": "rig-check", "units": ["sim:0"], "on_ms": 20,
            "off_ms": 20, "response_window_ms": list(WINDOW), "compute_check": "off", "probe": probe, **extra}


def _maximize(sigma0: float, generations: int) -> dict:
    return {"mode": "maximize", "seed": 4, "population": 8, "generations": generations, "generator": GEN,
            "optimizer": {"name": "sepcma", "sigma0": sigma0}, "reference": {"check_repeats": REPEATS}}


@pytest.fixture
def rig(api_db_url, tmp_path):
    r = Rig(url_text(api_db_url), tmp_path, TOKEN, [
        "--adapter", "sim", "--session-seed", "4", "--mode", "maximize", "--subject-param", "image_size=16",
        "--subject-param", "wavelength=6.0", "--response-window", f"{WINDOW[0]:g},{WINDOW[1]:g}",
        "--baseline-window=-20,0"]).start()
    yield r
    r.stop()


def _check_rows(engine, sid) -> list:
    with engine.connect() as c:
        return c.execute(sa.text(
            "SELECT g.index AS gen, p.order_in_batch AS slot, p.attempt, p.superseded, p.kind, r.counts"
            " FROM presentations p JOIN generations g ON g.id = p.generation_id"
            " LEFT JOIN responses r ON r.presentation_id = p.id"
            " WHERE p.session_id = :s AND p.kind IN ('reference-check', 'blank') ORDER BY 1, 2, 3"),
            {"s": sid}).all()


def _events(engine, sid) -> list:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT kind, level, message, payload AS data FROM events WHERE session_id = :s ORDER BY id"),
                         {"s": sid}).all()


def _replay(rig: Rig, sid: str) -> None:
    rep = subprocess.run([sys.executable, "-m", "server.cli", "replay", sid], cwd=ROOT, env=rig.env,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0 and "bit for bit" in rep.stdout, rep.stdout + rep.stderr


@pytest.mark.slow
def test_a_live_maximize_stuck_at_baseline_fails_with_the_message(rig, api_db_url):
    engine = sa.create_engine(url_text(api_db_url))
    made = rig.create(_spec(_maximize(1e-4, 3)), "stuck")
    assert made.returncode == 0, made.stderr
    sid = json.loads(made.stdout)["id"]
    assert wait_for(lambda: session_status(engine, sid) in ("failed", "completed"), 180, 0.05), rig.logs()
    assert session_status(engine, sid) == "failed"
    # the check's presentations: one more generation (index 3), reference and blank alternating, all answered
    rows = _check_rows(engine, sid)
    active = [r for r in rows if not r.superseded]
    assert {r.gen for r in rows} == {3} and len(active) == 2 * REPEATS
    assert [r.kind for r in active] == ["reference-check", "blank"] * REPEATS
    assert all(r.counts is not None for r in active)
    # the same message as in silico, as an error event
    begun, *errors = [e for e in _events(engine, sid) if e.kind == "reference_check"]
    assert begun.message == f"reference check: showing the best image and a blank screen {REPEATS} times each"
    assert len(errors) == 1 and errors[0].level == "error"
    msg = errors[0].message
    assert msg.startswith("reference: re-measured rate") and "not clearly above the blank screen" in msg
    assert "maximize session did not leave baseline" in msg and "[optimizer] sigma0" in msg
    assert errors[0].data["passed"] is False
    assert errors[0].data["presentations"] == REPEATS
    # the operator sees it
    show = rig.session("show", sid)
    assert show.returncode == 0, show.stderr
    assert " failed " in show.stdout and f"reference check: {msg}" in show.stdout
    import httpx  # the dashboard's view and plots take the check's generation (no candidates) in their stride

    auth = {"Authorization": f"Bearer {TOKEN}"}
    view = httpx.get(f"{rig.url}/api/sessions/{sid}/view", headers=auth, timeout=30)
    assert view.status_code == 200 and view.json()["detail"]["status"] == "failed", view.text[:300]
    assert view.json()["detail"]["generations_done"] == 3 == view.json()["detail"]["generations_budget"]
    assert [t["kind"] for t in view.json()["images"]["tiles"]][:2] == ["reference-check", "blank"]
    gens = httpx.get(f"{rig.url}/api/sessions/{sid}/generations", headers=auth, timeout=30).json()
    assert [g["index"] for g in gens] == [0, 1, 2, 3] and gens[3]["candidates"] == 0 and gens[3]["mean_response"] is None
    # a probe that names it as its reference is refused in one line with the message
    probe = {"mode": "invariance", "seed": 4, "population": 4, "generations": 2, "generator": GEN,
             "stages": ["pixel"]}
    refused = rig.create(_spec(probe, reference={"source": "maximize-session", "session_id": sid}), "refused")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "failed its reference: re-measured rate" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    _replay(rig, sid)
    # analyses find the check by kind: in the CSV and in the NWB export's stimulus table
    out = rig.tmp / "export"
    exp = subprocess.run([sys.executable, "-m", "server.cli", "export", sid, "--nwb", str(out / "s.nwb"), "--csv",
                          str(out), "--species", "Mus musculus", "--age", "P90D", "--sex", "U", "--lab", "l",
                          "--institution", "i", "-q"], cwd=ROOT, env=rig.env, capture_output=True, text=True,
                         timeout=300)
    assert exp.returncode == 0, exp.stderr
    import csv

    with open(out / "presentations.csv") as f:
        kinds = [r["kind"] for r in csv.DictReader(f) if r["superseded"] == "False"]
    assert kinds.count("reference-check") == kinds.count("blank") == REPEATS and kinds.count("candidate") == 3 * 8
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(out / "s.nwb"), "r") as io:
        table = io.read().intervals["stimulus_presentations"].to_dataframe()
    assert (table["kind"] == "reference-check").sum() >= REPEATS and (table["kind"] == "blank").sum() >= REPEATS


@pytest.mark.slow
def test_the_check_survives_a_server_kill_and_the_probe_starts_from_its_rates(rig, api_db_url):
    engine = sa.create_engine(url_text(api_db_url))
    made = rig.create(_spec(_maximize(1.0, 5)), "max")
    assert made.returncode == 0, made.stderr
    sid = json.loads(made.stdout)["id"]

    def answered_checks() -> int:
        return sum(r.counts is not None and not r.superseded for r in _check_rows(engine, sid))

    # SIGKILL the server in the middle of the check (some of its presentations answered), then start it again
    assert wait_for(lambda: answered_checks() >= 3 or session_status(engine, sid) != "running", 180, 0.05), rig.logs()
    assert session_status(engine, sid) == "running" and answered_checks() < 2 * REPEATS
    rig.kill_server()
    rig.start_server()
    assert wait_for(lambda: session_status(engine, sid) in ("failed", "completed"), 180, 0.05), rig.logs()
    assert session_status(engine, sid) == "completed", _events(engine, sid)
    rows = _check_rows(engine, sid)
    slots: dict[int, list] = {}
    for r in rows:
        slots.setdefault(r.slot, []).append(r)
    assert sorted(slots) == list(range(2 * REPEATS)) and {r.gen for r in rows} == {5}
    for attempts in slots.values():  # each slot answered by exactly one active attempt, nothing counted twice
        active = [r for r in attempts if not r.superseded]
        assert len(active) == 1 and active[0].counts is not None
        assert [r.attempt for r in attempts] == list(range(len(attempts)))
    begun, *passed = [e for e in _events(engine, sid) if e.kind == "reference_check"]
    assert begun.message.startswith("reference check: showing") and len(passed) == 1 and passed[0].level == "info" and passed[0].message.endswith(": passed")
    check = passed[0].data
    assert check["passed"] and check["reference_rate_hz"] >= 3 * check["baseline_rate_hz"]
    window_s = (WINDOW[1] - WINDOW[0]) / 1000
    ref_counts = [r.counts[0] for r in sorted(rows, key=lambda r: r.slot)
                  if not r.superseded and r.kind == "reference-check"]
    assert check["reference_rate_hz"] == pytest.approx(np.mean(ref_counts) / window_s, rel=1e-12)
    _replay(rig, sid)

    # the probe on this reference starts with the check's rates as its reference response
    probe = {"mode": "invariance", "seed": 4, "population": 4, "generations": 2, "generator": GEN,
             "stages": ["pixel"], "reference_repeats": 2, "confirm": False}
    made = rig.create(_spec(probe, reference={"source": "maximize-session", "session_id": sid}), "probe")
    assert made.returncode == 0, made.stderr
    pid = json.loads(made.stdout)["id"]
    stored = json.loads(made.stdout)["config"]
    assert stored["reference_rates"] == [[c / window_s] for c in ref_counts]
    assert stored["reference_check"]["session_id"] == sid and stored["reference_check"]["passed"]
    assert wait_for(lambda: session_status(engine, pid) in ("failed", "completed"), 180, 0.05), rig.logs()
    assert session_status(engine, pid) == "completed"
    with engine.connect() as c:
        state0 = c.execute(sa.text("SELECT optimizer_state_after FROM generations WHERE session_id = :s AND"
                                   " index = 0"), {"s": pid}).scalar_one()
        own = c.execute(sa.text(
            "SELECT r.counts[1] FROM presentations p JOIN generations g ON g.id = p.generation_id JOIN responses r"
            " ON r.presentation_id = p.id WHERE p.session_id = :s AND g.index = 0 AND p.kind = 'reference'"
            " AND NOT p.superseded"), {"s": pid}).scalars().all()
    s0 = pickle.loads(bytes(state0))
    assert len(own) == 2 and s0["ref_count"] == REPEATS + 2
    expect = (np.sum(ref_counts) + np.sum(own)) / window_s
    assert float(s0["ref_sum"][0]) == pytest.approx(expect, rel=1e-12)
    _replay(rig, pid)
    uuid.UUID(pid)


# -- the same steps in process (no database): fast checks of the runner's check and of the prior ----------

def _runner(probe: dict, **kw):
    from server.config import parse_config
    from server.insilico import InSilicoRig
    from server.probe_setup import build_generator, build_search, build_subject
    from server.reference_phase import CheckPlan
    from server.session_runner import SessionRunner

    cfg = parse_config(probe | {"subject": {"name": "complex-cell", "wavelength": 6.0},
                                "noise": {"kind": "poisson", "window_ms": 50}})
    gen = build_generator(cfg)
    runner = SessionRunner(build_search(cfg, gen, {}), seed=cfg.seed, reference_image=None, window_s=0.05,
                           reference_check=CheckPlan.of(cfg), **kw)
    return runner, InSilicoRig(build_subject(cfg, gen), cfg, 99)


@pytest.mark.parametrize("sigma0, passes", [(1e-4, False), (1.0, True)])
def test_the_runner_shows_the_best_image_and_a_blank_and_judges_them(sigma0, passes):
    from server.engine.reference_check import judge_reference

    runner, rig = _runner(_maximize(sigma0, 5))
    while not runner.search.done:
        runner.add_counts(rig.present(runner.next_batch()))
    assert not runner.done and runner.check is None  # the check is still due
    batch = runner.next_batch()
    assert batch.generation == 5 and [p.kind for p in batch.presentations] == ["reference-check", "blank"] * REPEATS
    pool = runner.search.pool
    best = pool.codes[int(np.argmax([np.mean(r) for r in pool.responses]))]
    expect = runner.search.generator.render(np.asarray(best)[None])[0]
    assert np.array_equal(batch.presentations[0].image, expect) and np.all(batch.presentations[1].image == 0.5)
    counts = rig.present(batch)
    assert runner.add_counts(counts[:-1]) is None and runner.check is None  # one still unanswered
    assert runner.add_counts(counts[-1:]) is None and runner.done
    rates = np.array([c.counts[0] for c in counts], dtype=np.float64) / 0.05
    want = judge_reference(rates[0::2], rates[1::2])
    assert runner.check == want and runner.check.passed is passes


def test_a_probe_told_the_checks_rates_starts_from_them():
    from server.config import parse_config
    from server.insilico import InSilicoRig
    from server.probe_setup import build_generator, build_search, build_stages, build_subject
    from server.session_runner import SessionRunner

    cfg = parse_config({"mode": "invariance", "seed": 3, "population": 4, "generations": 2, "generator": GEN,
                        "stages": ["pixel"], "reference": {"source": "code"}, "confirm": False,
                        "subject": {"name": "complex-cell", "wavelength": 6.0}})
    gen = build_generator(cfg)
    code = np.random.default_rng(0).normal(0, 0.5, 64)
    image = gen.render(code[None])[0]
    prior = np.array([[40.0], [60.0], [50.0]])
    runner = SessionRunner(build_search(cfg, gen, build_stages(cfg), reference_code=code, reference_image=image),
                           seed=3, reference_image=image, reference_repeats=2, window_s=0.15, prior_reference=prior)
    rig = InSilicoRig(build_subject(cfg, gen), cfg, 5)
    batch = runner.next_batch()
    counts = rig.present(batch)
    report = runner.add_counts(counts)
    own = [c.counts[0] / 0.15 for c, p in zip(counts, batch.presentations) if p.kind == "reference"]
    assert len(own) == 2
    assert report.reference_response[0] == pytest.approx((prior.sum() + sum(own)) / 5, rel=1e-12)
