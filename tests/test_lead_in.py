"""Lead-in reference repeats: each generation opens with reference repeats planned, committed and shown
while the previous generation's last answers are still coming, so the display never waits for the server.

Checked here: the plan (slots, generations, nothing planned past the budget), that the twin is unchanged by
how the lead-in's answers interleave, the stored 'planned' generation (constraints, promotion, resume), and
a stored session interrupted with a lead-in half answered that resumes to the uninterrupted result.
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from server.config import parse_config
from server.db.records import GenerationStateError, Proposal, ResponseRecord
from server.insilico import DatabaseRecorder, InSilicoRig, resume_stored, run_probe
from server.session_runner import SessionRunner

pytest_plugins = ["db_fixtures"]

PROBE = {
    "mode": "invariance", "seed": 3, "population": 6, "generations": 4, "reference_repeats": 4, "lead_in": 2,
    "generator": {"name": "dct", "code_size": 32, "image_size": 8, "channels": 1},
    "stages": ["pixel"], "noise": {"kind": "poisson", "window_ms": 150},
    "subject": {"name": "complex-cell", "image_size": 8, "wavelength": 4.0},
}


@pytest.fixture
def config(tmp_path):
    code = np.random.default_rng(0).standard_normal(32)
    np.save(tmp_path / "ref.npy", code)
    return parse_config(PROBE | {"reference": {"source": "code", "path": str(tmp_path / "ref.npy")}})


def _runner(config, recorder=None) -> tuple[SessionRunner, InSilicoRig]:
    """The probe phase's runner as run_probe builds it (in memory, or stored by ``recorder``), not yet run."""
    from server.engine.base import SeedStreams
    from server.probe_setup import build_generator, build_subject

    captured = {}

    class Capture(DatabaseRecorder):
        def __init__(self):
            self.sessions = []

        def runner_for(self, phase, search, reference_image, cfg):
            if recorder is not None:
                captured["runner"] = recorder.runner_for(phase, search, reference_image, cfg)
            else:
                captured["runner"] = SessionRunner(search, seed=cfg.seed, reference_image=reference_image,
                                                   reference_repeats=cfg.reference_repeats, lead_in=cfg.lead_in,
                                                   window_s=cfg.noise.window_ms / 1000.0)
            raise _Stop

    with pytest.raises(_Stop):
        run_probe(config, recorder=Capture())
    subject = build_subject(config, build_generator(config))
    return captured["runner"], InSilicoRig(subject, config, SeedStreams(config.seed).noise_seed(config.mode))


class _Stop(Exception):
    pass


def _interrupted(repo, config, monkeypatch):
    """A stored run stopped (as if killed) where the patches in place raise _Stop; the session's id."""
    recorder = DatabaseRecorder(repo)
    with pytest.raises(_Stop):
        run_probe(config, recorder=recorder)
    monkeypatch.undo()
    return recorder.sessions[-1][1]


def test_each_generation_opens_with_its_lead_in_planned_one_generation_ahead(config):
    config = config.model_copy(update={"far_reach": 0})  # the population alone: 6 candidates a generation
    runner, rig = _runner(config)
    first = runner.next_batch()
    gens = [p.generation for p in first.presentations]
    # generation 0 whole (its lead-in first), then generation 1's lead-in only
    assert gens == [0] * (6 + 4) + [1, 1]
    assert [(p.order, p.kind) for p in first.presentations[:2]] == [(0, "reference"), (1, "reference")]
    assert [(p.order, p.kind) for p in first.presentations[-2:]] == [(0, "reference"), (1, "reference")]
    body0 = first.presentations[2:10]
    assert sorted(p.order for p in body0) == list(range(2, 10))
    assert sum(p.kind == "reference" for p in body0) == 2  # the other repeats stay shuffled among candidates

    counts = rig.present(first)
    # the lead-in ahead is answered first: it is kept for generation 1 and does not complete generation 0
    assert runner.add_counts(counts[-2:]) is None and len(runner.ahead.answered) == 2
    report = runner.add_counts(counts[:-2])
    assert report is not None and report.generation == 0

    second = runner.next_batch()  # generation 1's body (slots 2..) and generation 2's lead-in
    assert [p.generation for p in second.presentations] == [1] * (len(second.presentations) - 2) + [2, 2]
    assert min(p.order for p in second.presentations if p.generation == 1) == 2
    assert len(runner.open.batch.presentations) == len(second.presentations) - 2 + 2  # with its lead-in
    assert len(runner.open.answered) == 2  # the lead-in's answers carried over
    runner.add_counts(rig.present(second))
    third = runner.next_batch()
    runner.add_counts(rig.present(third))
    last = runner.next_batch()  # generation 3 is the last of 4: nothing planned after it
    assert {p.generation for p in last.presentations} == {3} and runner.ahead is None
    runner.add_counts(rig.present(last))
    assert runner.done

    # the twin: the same probe run in silico (answers in batch order) gives the same generations
    twin = run_probe(config)
    assert len(twin.probe.reports) == len(runner.reports) == 4
    for a, b in zip(runner.reports, twin.probe.reports):
        assert np.array_equal(a.responses, b.responses) and np.array_equal(a.fitness, b.fitness)


def test_lead_in_cannot_exceed_the_reference_repeats():
    from server.engine.base import ConfigError

    with pytest.raises(ConfigError, match="lead_in: 5 is more than reference_repeats"):
        parse_config(PROBE | {"lead_in": 5})


def _session(repo):
    sid = repo.create_session(config={}, seed=1, mode="live", operator="t", subject_id="s", rig="r")
    repo.add_units(sid, [(0, 1)])
    return sid


def _props(n_cand: int, start: int = 0):
    img = np.full((4, 4, 3), 0.25, np.float32)
    out = [Proposal(image=img + 0.01 * k, kind="candidate", order_in_batch=start + k, code=np.full(3, float(k)),
                    code_index=k) for k in range(n_cand)]
    return out


def _refs(orders):
    ref = np.full((4, 4, 3), 0.5, np.float32)
    return [Proposal(image=ref, kind="reference", order_in_batch=k, code=None, code_index=None) for k in orders]


def test_a_planned_generation_is_stored_ahead_and_promoted_when_proposed(repo, db_engine):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _refs([0]) + _props(2, 1), b"s0", next_lead_in=_refs([0]))
    assert len(ids) == 4  # three of generation 0, then generation 1's lead-in
    point = repo.load_resume_point(sid)
    assert point.in_flight.index == 0 and point.planned.index == 1
    assert [p.id for p in point.planned.presentations] == ids[3:]

    with pytest.raises(GenerationStateError, match="generation 1 is planned"):
        repo.complete_generation(sid, 1, [], optimizer_state=b"x")
    with pytest.raises(GenerationStateError, match="generation 0 is still in flight"):
        repo.begin_generation(sid, 1, _props(2, 1), b"s1")
    with pytest.raises(ValueError, match="next_lead_in: only presentations without a code"):
        repo.begin_generation(sid, 0, _props(1), b"s0", next_lead_in=_props(1))
    # the lead-in may be answered before its generation is proposed
    repo.record_responses(sid, [ResponseRecord(ids[3], np.array([4]), 50.0, 200.0)])
    repo.record_responses(sid, [ResponseRecord(p, np.array([1]), 50.0, 200.0) for p in ids[:3]])
    repo.complete_generation(sid, 0, [], optimizer_state=b"s1")

    with pytest.raises(GenerationStateError, match=r"proposals reuse slots \[0\] of its lead-in"):
        repo.begin_generation(sid, 1, _props(2, 0), b"s1")  # slot 0 belongs to the lead-in
    ids1 = repo.begin_generation(sid, 1, _props(2, 1), b"s1")
    assert repo.begin_generation(sid, 1, _props(2, 1), b"s1") == ids1  # a repeated begin: same ids
    data = repo.generation_data(sid, 1)
    assert data.status == "proposed" and [p.order_in_batch for p in data.presentations] == [0, 1, 2]
    assert data.presentations[0].counts.tolist() == [4]
    point = repo.load_resume_point(sid)
    assert point.in_flight.index == 1 and point.planned is None
    with db_engine.connect() as c:
        row = c.execute(text("SELECT optimizer_state_before FROM generations g WHERE session_id = :s"
                             " AND index = 1"), {"s": sid}).scalar()
    assert bytes(row) == b"s1"


def test_the_database_refuses_a_proposed_generation_without_its_state(repo, db_engine):
    sid = _session(repo)
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError, match="ck_generations_state_before"):
        with db_engine.begin() as c:
            c.execute(text("INSERT INTO generations (session_id, index, status) VALUES (:s, 0, 'proposed')"),
                      {"s": sid})
    with pytest.raises(IntegrityError, match="uq_generations_planned"):
        with db_engine.begin() as c:
            c.execute(text("INSERT INTO generations (session_id, index, status) VALUES (:s, 1, 'planned'),"
                           " (:s, 2, 'planned')"), {"s": sid})


@pytest.mark.parametrize("crash", ["before proposing generation 1", "after proposing generation 1"])
def test_interrupted_with_the_lead_in_half_answered_resumes_to_the_uninterrupted_result(
    repo, config, monkeypatch, crash
):
    """A stored in-silico session stops (as if killed) after generation 0, with one of generation 1's two
    lead-in presentations answered; `resume_stored` finishes it exactly as an uninterrupted run."""
    twin = run_probe(config)
    calls = {"present": 0, "next": 0}
    present, next_batch = InSilicoRig.present, SessionRunner.next_batch

    def partial_present(self, batch):
        calls["present"] += 1
        if calls["present"] == 2 and crash == "after proposing generation 1":
            raise _Stop
        out = present(self, batch)
        if calls["present"] == 1:  # generation 1's lead-in: only its first presentation is answered
            ahead = [c for c, p in zip(out, batch.presentations) if p.generation == 1]
            out = [c for c, p in zip(out, batch.presentations) if p.generation == 0] + ahead[:1]
        return out

    def crashing_next(self):
        calls["next"] += 1
        if calls["next"] == 2 and crash == "before proposing generation 1":
            raise _Stop
        return next_batch(self)

    monkeypatch.setattr(InSilicoRig, "present", partial_present)
    monkeypatch.setattr(SessionRunner, "next_batch", crashing_next)
    sid = _interrupted(repo, config, monkeypatch)
    point = repo.load_resume_point(sid)
    if crash == "before proposing generation 1":
        assert point.in_flight is None and point.planned.index == 1
    else:
        assert point.in_flight.index == 1 and point.planned.index == 2
    assert sum(p.answered for p in (point.planned if point.in_flight is None else
                                    repo.generation_data(sid, 1)).presentations[:2]) == 1

    phase = resume_stored(repo, sid)
    stored = {r.generation: r for r in phase.reports}
    for b in twin.probe.reports[1:]:  # generation 0 was scored before the interruption
        a = stored[b.generation]
        assert np.array_equal(a.responses, b.responses) and np.array_equal(a.fitness, b.fitness)
    # the search's own pick (in silico the run may then re-choose it from fresh presentations)
    assert np.array_equal(phase.search.result().code, twin.probe.search.result().code)
    # every slot answered once, and nothing was left planned
    data = [repo.generation_data(sid, g) for g in range(4)]
    assert all(p.answered for d in data for p in d.presentations)
    assert repo.load_resume_point(sid).planned is None


def _equal_reports(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.generation == y.generation
        assert np.array_equal(x.responses, y.responses) and np.array_equal(x.fitness, y.fitness)


def test_failed_commits_are_retried_without_telling_twice_or_losing_the_lead_in(repo, config, monkeypatch):
    """The database fails once while generation 1's scores are committed (after tell) and once while
    generation 2's proposals are (with generation 3's lead-in): the counts re-sent and the proposal asked
    again finish the session exactly as without the failures."""
    from server.db.repository import Repository

    twin = run_probe(config)
    runner, rig = _runner(config, DatabaseRecorder(repo))
    failures = {("complete", 1): 1, ("begin", 2): 1}
    complete, begin = Repository.complete_generation, Repository.begin_generation

    def flaky(name, method):
        def call(self, session_id, index, *a, **kw):
            if failures.get((name, index)):
                failures[(name, index)] -= 1
                raise ConnectionError(f"{name} {index}: the connection to the database was lost")
            return method(self, session_id, index, *a, **kw)
        return call

    monkeypatch.setattr(Repository, "complete_generation", flaky("complete", complete))
    monkeypatch.setattr(Repository, "begin_generation", flaky("begin", begin))
    retried = 0
    while not runner.done:
        try:
            batch = runner.next_batch()
        except ConnectionError:
            retried += 1
            batch = runner.next_batch()
        counts = rig.present(batch)
        try:
            runner.add_counts(counts)
        except ConnectionError:
            retried += 1
            assert runner.open is not None  # still open, already told: the re-sent counts only commit again
            runner.add_counts(counts)
    assert retried == 2 and not any(failures.values())
    _equal_reports(runner.reports, twin.probe.reports)
    sid = runner.session_id
    assert [repo.generation_data(sid, g).status for g in range(4)] == ["completed"] * 4


def test_resume_scores_a_generation_answered_in_full_before_the_crash(repo, config, monkeypatch):
    """Killed while generation 1's scores were being committed: every answer is stored but the generation
    is not completed. Resuming scores it from the stored answers and finishes as the uninterrupted run."""
    from server.db.repository import Repository

    twin = run_probe(config)
    complete = Repository.complete_generation

    def crash(self, session_id, index, *a, **kw):
        if index == 1:
            raise _Stop
        return complete(self, session_id, index, *a, **kw)

    monkeypatch.setattr(Repository, "complete_generation", crash)
    sid = _interrupted(repo, config, monkeypatch)
    point = repo.load_resume_point(sid)
    assert point.in_flight.index == 1 and all(p.answered for p in point.in_flight.data.presentations)

    phase = resume_stored(repo, sid)
    _equal_reports(phase.reports, twin.probe.reports[1:])
    # the search's own pick (in silico the run may then re-choose it from fresh presentations)
    assert np.array_equal(phase.search.result().code, twin.probe.search.result().code)
