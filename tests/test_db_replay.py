"""Offline replay of stored sessions: the stored seed and responses re-create every proposal bit for bit,
and a stored code that was altered is caught."""

import uuid

import numpy as np
from sqlalchemy import text
from typer.testing import CliRunner

from server.config import parse_config
from server.insilico import DatabaseRecorder, run_probe
from server.stored import replay

pytest_plugins = ["db_fixtures"]

PROBE = {
    "mode": "adversarial", "seed": 8, "population": 10, "generations": 6,
    "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
    "subject": {"name": "complex-cell", "wavelength": 6.0}, "noise": {"kind": "poisson"},
    "reference": {"source": "maximize", "generations": 4}, "optimizer": {"name": "sepcma", "sigma0": 0.3},
}


def test_replay_recreates_a_stored_run_bit_for_bit_and_catches_tampering(repo, db_engine):
    rec = DatabaseRecorder(repo)
    result = run_probe(parse_config(PROBE), recorder=rec)
    rec.finish()
    (_, max_sid), (_, probe_sid) = rec.sessions

    for sid, phase in ((max_sid, result.phases[0]), (probe_sid, result.probe)):
        rep = replay(repo, sid)
        assert rep.identical and rep.generations == len(phase.reports)
        # the search's own pick (an in-silico run may re-check it afterwards: evaluation.verification)
        assert np.array_equal(rep.session.search.result().code, phase.search.result().code)
        for a, b in zip(rep.reports, phase.reports):
            assert np.array_equal(a.fitness, b.fitness)

    # Alter one stored candidate code of generation 3: the replay must notice.
    with db_engine.begin() as c:
        pid, code = c.execute(text(
            "SELECT p.id, p.code FROM presentations p JOIN generations g ON g.id = p.generation_id"
            " WHERE p.session_id = :s AND g.index = 3 AND p.kind = 'candidate' ORDER BY p.id LIMIT 1"),
            {"s": probe_sid}).one()
        bad = np.frombuffer(code, dtype=np.float64).copy()
        bad[0] += 1e-9
        c.execute(text("UPDATE presentations SET code = :c WHERE id = :p"), {"c": bad.tobytes(), "p": pid})
    rep = replay(repo, probe_sid)
    assert not rep.identical and rep.mismatch.startswith("generation 3 candidate")


def test_replay_command_reports_unknown_session_in_one_line(db_url, monkeypatch):
    from server.cli import app

    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    out = CliRunner().invoke(app, ["replay", str(uuid.uuid4())])
    assert out.exit_code == 2
    assert "no session" in out.output and len(out.output.strip().splitlines()) == 1


def test_resumed_selection_pool_is_rebuilt_from_stored_scores(repo):
    """States are stored without the growing selection pool; a resume rebuilds it from the scores table
    and selects exactly what the uninterrupted run selected."""
    from server.session_runner import SessionRunner
    from server.stored import rebuild

    for mode, extra in (("adversarial", {}), ("maximize", {"reference": {"source": "maximize", "generations": 4,
                                                                           "check_repeats": 0}})):
        rec = DatabaseRecorder(repo)
        result = run_probe(parse_config(PROBE | {"mode": mode} | extra), recorder=rec)
        sid = rec.sessions[-1][1]
        stored = rebuild(repo, sid)
        runner = stored.runner(repo)
        assert isinstance(runner, SessionRunner)
        runner.resume()  # nothing in flight: loads the last state and rebuilds the pool
        pool, twin = runner.search.pool, result.probe.search.pool
        assert pool.generation == twin.generation and pool.index == twin.index
        assert all(np.array_equal(a, b) for a, b in zip(pool.codes, twin.codes))
        assert pool.distances == twin.distances and pool.fitness == twin.fitness
        assert np.array_equal(runner.search.result().code, result.probe.search.result().code)
        assert len(runner.search.state(include_pool=False)) < len(runner.search.state()) or not pool.codes
