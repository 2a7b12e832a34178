"""The repository against a real PostgreSQL: write order, idempotent writes, constraints, read side."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from server.db.records import (
    GenerationStateError,
    PresentationTiming,
    Proposal,
    ResponseRecord,
    ScoreRecord,
    SessionNotFound,
    StorageError,
    group_unit_rows,
)
from server.db.repository import Repository
from server.png import encode_png

pytest_plugins = ["db_fixtures"]

N_UNITS = 4
CODE = 6


def _session(repo: Repository, n_units: int = N_UNITS, **kw) -> uuid.UUID:
    args = dict(
        config={"probe": "invariance", "pop": 3}, seed=11, mode="insilico", operator="ana", subject_id="m01", rig="sim"
    )
    args.update(kw)
    sid = repo.create_session(**args)
    repo.add_units(sid, [(ch, 0, f"ch{ch}") for ch in range(n_units)])
    return sid


def _proposals(gen: int, n_cand: int = 3, n_ref: int = 2, seed: int = 0) -> list[Proposal]:
    rng = np.random.default_rng([seed, gen])
    ref = np.full((8, 8, 3), 0.5, dtype=np.float32)
    props = [
        Proposal(rng.random((8, 8, 3)).astype(np.float32), "candidate", i, code=rng.standard_normal(CODE), code_index=i)
        for i in range(n_cand)
    ]
    props += [Proposal(encode_png(ref), "reference", n_cand + j) for j in range(n_ref)]
    return props


def _answer(repo, sid, ids, value=3):
    return repo.record_responses(
        sid,
        [
            ResponseRecord(pid, [value + k] * N_UNITS, 50.0, 200.0, [1] * N_UNITS, -50.0, 0.0)
            for k, pid in enumerate(ids)
        ],
    )


def _complete(repo, sid, gen, ids, state=b"after"):
    scores = [ScoreRecord(pid, {"pixel": 1.0 + k, "layer3": 0.5}, k % 2, 10.0 - k, k == 0) for k, pid in enumerate(ids)]
    repo.complete_generation(sid, gen, scores, state, rng_state={"k": 1}, timings={"tell_ms": 1.5})


# --- write order -------------------------------------------------------------------------------------------


def test_begin_generation_commits_everything_before_returning_ids(repo, db_engine):
    sid = _session(repo)
    props = _proposals(0)
    ids = repo.begin_generation(sid, 0, props, b"state-0", timings={"ask_ms": 2.0})
    assert len(ids) == len(props) and len(set(ids)) == len(ids)
    # a separate connection (another process after a crash) sees the whole batch at once
    with db_engine.connect() as other:
        rows = other.execute(
            sa.text("SELECT id, order_in_batch, kind, code FROM presentations WHERE session_id = :s ORDER BY id"),
            {"s": sid},
        ).all()
        state = other.execute(
            sa.text("SELECT optimizer_state_before FROM generations WHERE session_id = :s"), {"s": sid}
        ).scalar()
    assert [r.id for r in rows] == ids
    assert [r.order_in_batch for r in rows] == [p.order_in_batch for p in props]
    assert np.array_equal(np.frombuffer(rows[1].code, "<f8"), props[1].code)
    assert bytes(state) == b"state-0"


def test_reference_shown_four_times_is_stored_once(repo, db_engine):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0, n_cand=2, n_ref=4), b"s")
    with db_engine.connect() as c:
        n_stimuli = c.execute(sa.text("SELECT count(*) FROM stimuli")).scalar()
        n_ref_stimuli = c.execute(
            sa.text("SELECT count(DISTINCT stimulus_id) FROM presentations WHERE kind = 'reference'")
        ).scalar()
    assert len(ids) == 6 and n_stimuli == 3 and n_ref_stimuli == 1


def test_generations_follow_each_other(repo):
    sid = _session(repo)
    with pytest.raises(GenerationStateError, match="next generation must be 0"):
        repo.begin_generation(sid, 1, _proposals(1), b"s")
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s")
    with pytest.raises(GenerationStateError, match="still in flight"):
        repo.begin_generation(sid, 1, _proposals(1), b"s")
    _answer(repo, sid, ids)
    _complete(repo, sid, 0, ids)
    with pytest.raises(GenerationStateError, match="already completed"):
        repo.begin_generation(sid, 0, _proposals(0), b"s")
    assert len(repo.begin_generation(sid, 1, _proposals(1), b"s")) == 5


def test_repeated_begin_returns_the_same_ids_and_different_proposals_are_refused(repo):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s")
    assert repo.begin_generation(sid, 0, _proposals(0), b"s") == ids
    with pytest.raises(GenerationStateError, match="different proposals"):
        repo.begin_generation(sid, 0, _proposals(0, seed=1), b"s")
    assert [e["kind"] for e in repo.events(sid)] == ["generation_conflict"]
    assert repo.session_summary(sid).n_presentations == 5


def test_optimizer_sees_only_committed_responses_and_scores_need_them(repo, db_engine):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s")
    _answer(repo, sid, ids[:2])
    data = repo.generation_data(sid, 0)
    assert [p.answered for p in data.presentations] == [True, True, False, False, False]
    assert data.counts_matrix().tolist() == [[3] * N_UNITS, [4] * N_UNITS, [-1] * N_UNITS]
    assert data.candidate_codes().shape == (3, CODE)
    with pytest.raises(StorageError, match=f"presentation {ids[2]} has no committed response"):
        _complete(repo, sid, 0, ids[:3])
    # the database itself refuses a score without a response, whoever writes it
    with db_engine.connect() as c:
        gen_id = c.execute(sa.text("SELECT id FROM generations")).scalar()
    with pytest.raises(IntegrityError, match="fk_scores_presentation_id_responses"):
        with db_engine.begin() as c:
            c.execute(
                sa.text("INSERT INTO scores (presentation_id, generation_id, distances) VALUES (:p, :g, '{}')"),
                {"p": ids[2], "g": gen_id},
            )
    assert repo.generation_data(sid, 0).status == "proposed"  # the failed completion left nothing behind


def test_complete_generation_stores_scores_and_state_once(repo):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s0")
    _answer(repo, sid, ids)
    _complete(repo, sid, 0, ids[:3], state=b"s1")
    _complete(repo, sid, 0, ids[:3], state=b"s1")  # repeated after a crash: no-op
    with pytest.raises(GenerationStateError, match="another state"):
        _complete(repo, sid, 0, ids[:3], state=b"other")
    rp = repo.load_resume_point(sid)
    assert (rp.last_completed, rp.optimizer_state, rp.rng_state, rp.in_flight, rp.next_index) == (
        0,
        b"s1",
        {"k": 1},
        None,
        1,
    )


# --- idempotent responses and timings -----------------------------------------------------------------------


def test_repeated_response_is_recognised_and_never_counted_twice(repo, db_engine):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s")
    first = _answer(repo, sid, ids[:3])
    assert (first.inserted, first.duplicates, first.conflicts, first.rejected) == (3, 0, (), ())
    again = _answer(repo, sid, ids[:3])  # the bridge re-sends after a reconnect
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 3, ())
    mixed = _answer(repo, sid, ids[2:5], value=5)  # one old (same counts), two new
    assert (mixed.inserted, mixed.duplicates) == (2, 1)
    same = ResponseRecord(ids[0], [3] * N_UNITS, 50.0, 200.0, [1] * N_UNITS, -50.0, 0.0)
    in_batch = repo.record_responses(sid, [same, same])
    assert (in_batch.inserted, in_batch.duplicates) == (0, 2)
    with db_engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM responses")).scalar() == 5
    assert repo.events(sid) == []


def test_repeated_response_with_a_different_count_is_logged_and_never_overwrites(repo):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s")
    _answer(repo, sid, ids[:1], value=3)
    res = _answer(repo, sid, ids[:1], value=9)
    assert (res.inserted, res.duplicates, res.conflicts) == (0, 0, (ids[0],))
    assert repo.generation_data(sid, 0).presentations[0].counts.tolist() == [3] * N_UNITS
    (event,) = repo.events(sid, kind="response_conflict")
    assert event["level"] == "error" and event["payload"]["presentation_ids"] == [ids[0]]


def test_responses_for_other_sessions_unknown_ids_or_wrong_unit_count_are_rejected(repo):
    sid = _session(repo)
    other = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s")
    other_ids = repo.begin_generation(other, 0, _proposals(0), b"s")
    res = repo.record_responses(
        sid,
        [
            ResponseRecord(ids[0], [1] * N_UNITS, 50, 200),
            ResponseRecord(other_ids[0], [1] * N_UNITS, 50, 200),  # a stale client of another session
            ResponseRecord(10**12, [1] * N_UNITS, 50, 200),
            ResponseRecord(ids[1], [1] * (N_UNITS - 1), 50, 200),
            ResponseRecord(ids[2], [1, -1, 0, 0], 50, 200),
            ResponseRecord(ids[3], [1] * N_UNITS, 200, 50),
        ],
    )
    assert res.inserted == 1
    assert sorted(res.rejected) == sorted([other_ids[0], 10**12, ids[1], ids[2], ids[3]])
    assert repo.generation_data(other, 0).answered == []
    (event,) = repo.events(sid, kind="response_rejected")
    assert "3 counts for 4 units" in event["message"] and "no presentation" in event["message"]


def test_timing_first_write_wins(repo):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s")
    t = [
        PresentationTiming(pid, "photodiode", display_onset=1.0 + k, rig_onset=100.0 + k, scheduled_onset=1.0 + k)
        for k, pid in enumerate(ids)
    ]
    assert repo.record_timings(sid, t).inserted == 5
    again = repo.record_timings(sid, [t[0], PresentationTiming(ids[1], "photodiode", 9.0, 9.0)])
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 1, (ids[1],))
    assert repo.load_history(sid).display_onset.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="needs a QC reason"):
        repo.record_presentation_timing(sid, PresentationTiming(ids[0], "flip", valid=False))
    with pytest.raises(ValueError, match="onset_source"):
        repo.record_presentation_timing(sid, PresentationTiming(ids[0], "guess"))


# --- re-showing after a crash ----------------------------------------------------------------------------


def test_reshown_presentation_supersedes_the_old_one_and_a_late_answer_is_kept_but_not_counted(repo):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s")
    _answer(repo, sid, ids[:4])
    with pytest.raises(StorageError, match="answered"):
        repo.reshow_presentations(sid, [ids[0]])
    (new,) = repo.reshow_presentations(sid, [ids[4]]).values()
    data = repo.generation_data(sid, 0)
    assert [p.id for p in data.presentations] == ids[:4] + [new]
    assert (
        data.presentations[4].attempt == 1
        and data.presentations[4].stimulus_sha256 == data.presentations[3].stimulus_sha256
    )
    _answer(repo, sid, [ids[4]], value=7)  # the old showing's answer arrives late: stored, not counted
    assert repo.generation_data(sid, 0).unanswered[0].id == new
    assert repo.begin_generation(sid, 0, _proposals(0), b"s") == ids[:4] + [new]
    _answer(repo, sid, [new], value=8)
    data = repo.generation_data(sid, 0)
    assert data.unanswered == [] and data.presentations[4].counts.tolist() == [8] * N_UNITS
    h = repo.load_history(sid)
    assert len(h) == 6 and h.superseded.sum() == 1 and h.counts[h.superseded][0].tolist() == [7] * N_UNITS
    assert repo.session_summary(sid).n_presentations == 5


# --- constraints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql, constraint",
    [
        ("UPDATE presentations SET kind = 'other'", "ck_presentations_kind"),
        (
            "UPDATE presentations SET code = NULL, code_size = NULL WHERE kind = 'candidate'",
            "ck_presentations_candidate",
        ),
        ("UPDATE presentations SET code = '\\x00'::bytea WHERE kind = 'candidate'", "ck_presentations_code_float64"),
        (
            "UPDATE presentations SET onset_source = 'photodiode', valid = false, dropped_frames = 0, shown_at = now(),"
            " rig_onset = 1",
            "ck_presentations_invalid_has_reason",
        ),
        ("UPDATE presentations SET onset_source = 'flip'", "ck_presentations_timing_complete"),
        (
            "UPDATE presentations SET onset_source = 'ttl', valid = true, dropped_frames = 0, shown_at = now()",
            "ck_presentations_rig_onset",
        ),
        ("UPDATE presentations SET superseded = false, attempt = 0", None),
        (
            "INSERT INTO presentations (session_id, generation_id, stimulus_id, kind, order_in_batch)"
            " SELECT session_id, generation_id, stimulus_id, kind, order_in_batch FROM presentations"
            " WHERE kind = 'reference' LIMIT 1",
            "uq_presentations_generation_id_order_in_batch_attempt",
        ),
        (
            "INSERT INTO generations (session_id, index, optimizer_state_before)"
            " SELECT session_id, 1, '' FROM generations",
            "uq_generations_in_flight",
        ),
        ("UPDATE generations SET status = 'completed'", "ck_generations_completed"),
        ("UPDATE sessions SET mode = 'dream'", "ck_sessions_mode"),
        ("UPDATE sessions SET status = 'completed'", "ck_sessions_finished"),
        (
            "INSERT INTO responses (presentation_id, counts, window_start_ms, window_end_ms)"
            " SELECT min(id), '{1,-2}', 0, 1 FROM presentations",
            "ck_responses_counts",
        ),
        (
            "INSERT INTO responses (presentation_id, counts, baseline_counts, window_start_ms, window_end_ms)"
            " SELECT min(id), '{1,2}', '{1}', 0, 1 FROM presentations",
            "ck_responses_baseline_counts",
        ),
        ("INSERT INTO stimuli (sha256, nbytes, data) VALUES ('\\x01', 1, '\\x01')", "ck_stimuli_sha256"),
        ("UPDATE stimuli SET path = 'a.png'", "ck_stimuli_data_or_path"),
        (
            "INSERT INTO units (session_id, position, channel, unit) SELECT id, 0, 99, 0 FROM sessions",
            "uq_units_session_id_position",
        ),
    ],
)
def test_constraints_make_wrong_data_impossible(repo, db_engine, sql, constraint):
    sid = _session(repo)
    repo.begin_generation(sid, 0, _proposals(0), b"s")
    if constraint is None:  # harmless statement: the parametrisation itself is checked to be able to pass
        with db_engine.begin() as c:
            c.execute(sa.text(sql))
        return
    with pytest.raises(IntegrityError, match=constraint):
        with db_engine.begin() as c:
            c.execute(sa.text(sql))


def test_proposal_validation(repo):
    sid = _session(repo)
    with pytest.raises(ValueError, match="needs its code"):
        repo.begin_generation(sid, 0, [Proposal(encode_png(np.zeros((2, 2, 3))), "candidate", 0)], b"s")
    with pytest.raises(ValueError, match="kind"):
        repo.begin_generation(sid, 0, [Proposal(encode_png(np.zeros((2, 2, 3))), "noise", 0)], b"s")
    with pytest.raises(ValueError, match="not a PNG"):
        repo.begin_generation(sid, 0, [Proposal(b"GIF89a....", "natural", 0)], b"s")
    with pytest.raises(ValueError, match="finite"):
        repo.begin_generation(
            sid, 0, [Proposal(np.zeros((2, 2, 3)), "candidate", 0, code=[np.nan], code_index=0)], b"s"
        )
    with pytest.raises(ValueError, match="unique"):
        repo.begin_generation(sid, 0, [Proposal(np.zeros((2, 2, 3)), "natural", 0)] * 2, b"s")
    with pytest.raises(SessionNotFound):
        repo.begin_generation(uuid.uuid4(), 0, _proposals(0), b"s")
    with pytest.raises(ValueError, match="mode"):
        repo.create_session(config={}, seed=1, mode="dream", operator="a", subject_id="b", rig="c")
    with pytest.raises(ValueError, match="seed"):
        repo.create_session(config={}, seed=2**64, mode="live", operator="a", subject_id="b", rig="c")
    with pytest.raises(ValueError, match=r"non-finite number in JSON value '\$\.bound'"):
        repo.create_session(config={"bound": float("inf")}, seed=1, mode="live", operator="a", subject_id="b", rig="c")
    no_units = repo.create_session(config={}, seed=1, mode="live", operator="a", subject_id="b", rig="c")
    with pytest.raises(StorageError, match="add_units"):
        repo.begin_generation(no_units, 0, _proposals(0), b"s")
    assert repo.session_summary(sid).n_generations == 0


def test_units_are_fixed_once_generations_start(repo):
    sid = _session(repo)
    repo.begin_generation(sid, 0, _proposals(0), b"s")
    with pytest.raises(StorageError, match="before the first generation"):
        repo.add_units(sid, [(40, 0)])


# --- state round trip ---------------------------------------------------------------------------------------


def test_rng_state_survives_the_database_bit_for_bit(repo):
    """PCG64 state holds 128-bit integers; JSONB numeric keeps them exactly, so a restored generator
    continues the same sequence."""
    sid = _session(repo)
    rng = np.random.default_rng(2**100 + 12345)
    rng.standard_normal(17)
    repo.begin_generation(sid, 0, _proposals(0), b"s", rng_state=rng.bit_generator.state)
    restored = np.random.default_rng()
    restored.bit_generator.state = repo.load_resume_point(sid).in_flight.rng_state_before
    assert np.array_equal(restored.standard_normal(1000), rng.standard_normal(1000))


def test_resume_point_lists_answered_and_unanswered_presentations(repo):
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s0")
    _answer(repo, sid, ids)
    _complete(repo, sid, 0, ids[:3], state=b"s1")
    ids = repo.begin_generation(sid, 1, _proposals(1), b"s1b", rng_state={"g": 1})
    repo.record_timings(sid, [PresentationTiming(pid, "flip", display_onset=1.0) for pid in ids[:3]])
    _answer(repo, sid, ids[:2])
    rp = repo.load_resume_point(sid)
    assert (rp.last_completed, rp.optimizer_state, rp.next_index) == (0, b"s1", 1)
    f = rp.in_flight
    assert (f.index, f.optimizer_state_before, f.rng_state_before) == (1, b"s1b", {"g": 1})
    assert [p.id for p in f.answered] == ids[:2]
    assert [(p.id, p.shown) for p in f.unanswered] == [(ids[2], True), (ids[3], False), (ids[4], False)]
    with pytest.raises(SessionNotFound):
        repo.load_resume_point(uuid.uuid4())


# --- read side ----------------------------------------------------------------------------------------------


def _two_generations(repo):
    sid = _session(repo)
    all_ids = []
    for g in range(2):
        ids = repo.begin_generation(sid, g, _proposals(g), f"s{g}".encode(), timings={"ask_ms": 1.0})
        repo.record_timings(
            sid,
            [
                PresentationTiming(
                    ids[0], "photodiode", 1.0, 2.0, dropped_frames=2, valid=False, qc_reasons=["late flip"]
                )
            ]
            + [PresentationTiming(pid, "photodiode", 1.0, 2.0) for pid in ids[1:]],
        )
        repo.record_responses(sid, [ResponseRecord(pid, [10 * g + k, 0, 0, 1], 50, 200) for k, pid in enumerate(ids)])
        repo.complete_generation(
            sid,
            g,
            [
                ScoreRecord(pid, {"pixel": float(k), "layer3": 1.0}, 0 if k < 2 else 1, float(k + g), k == 1)
                for k, pid in enumerate(ids[:3])
            ],
            f"s{g + 1}".encode(),
            timings={"tell_ms": 2.0},
        )
        all_ids.append(ids)
    return sid, all_ids


def test_session_summary_and_generation_stats(repo):
    sid, _ = _two_generations(repo)
    s = repo.session_summary(sid)
    assert (s.n_units, s.n_generations, s.n_completed_generations) == (N_UNITS, 2, 2)
    assert (s.n_presentations, s.n_answered, s.n_invalid, s.best_fitness) == (10, 10, 2, 3.0)
    assert [x.id for x in repo.list_sessions()] == [sid]
    stats = repo.generation_stats(sid)
    assert [st.index for st in stats] == [0, 1]
    g1 = stats[1]
    # candidates answered 10, 11, 12 on unit 0; the first is invalid and excluded from the mean
    assert (g1.n_presentations, g1.n_answered, g1.n_invalid, g1.n_candidates) == (5, 5, 1, 3)
    assert (g1.mean_response, g1.max_response, g1.mean_reference_response) == (11.5, 12, 13.5)
    assert (g1.front_size, g1.best_fitness) == (2, 3.0)
    assert g1.timings == {"ask_ms": 1.0, "tell_ms": 2.0} and g1.completed_at >= g1.proposed_at
    assert repo.generation_stats(sid, unit_position=3)[1].mean_response == 1.0


def test_front_history_and_generation_images(repo):
    sid, all_ids = _two_generations(repo)
    front = repo.front_history(sid)
    assert [(m.generation, m.presentation_id) for m in front] == [
        (0, all_ids[0][1]),
        (0, all_ids[0][0]),
        (1, all_ids[1][1]),
        (1, all_ids[1][0]),
    ]
    assert front[0].distances == {"pixel": 1.0, "layer3": 1.0} and front[0].selected and front[2].response == 11
    images = repo.generation_images(sid, 1)
    assert [im.presentation_id for im in images] == all_ids[1]
    props = _proposals(1)
    assert images[0].png == encode_png(props[0].image)
    assert images[0].stimulus_sha256 == hashlib.sha256(images[0].png).hexdigest()
    assert images[3].png == images[4].png == props[3].image
    assert [im.kind for im in repo.generation_images(sid, 1, kinds=["reference"])] == ["reference"] * 2
    assert repo.stimulus_images([images[0].stimulus_sha256]) == {images[0].stimulus_sha256: images[0].png}


def test_load_history_is_column_wise_and_complete(repo):
    sid, all_ids = _two_generations(repo)
    h = repo.load_history(sid, with_images=True, with_states=True)
    assert len(h) == 10 and h.presentation_id.tolist() == all_ids[0] + all_ids[1]
    assert h.generation.tolist() == [0] * 5 + [1] * 5
    assert h.counts.shape == (10, N_UNITS) and h.counts[6].tolist() == [11, 0, 0, 1]
    assert np.array_equal(h.codes[5], _proposals(1)[0].code) and np.isnan(h.codes[3]).all()
    assert h.kind.tolist() == (["candidate"] * 3 + ["reference"] * 2) * 2
    assert h.valid.tolist() == ([False] + [True] * 4) * 2 and h.qc_reasons[0] == ["late flip"]
    assert (
        h.front_index.tolist() == [0, 0, 1, -1, -1] * 2
        and h.selected.tolist() == [False, True, False, False, False] * 2
    )
    assert h.window_ms[0].tolist() == [50.0, 200.0]
    assert [g["optimizer_state_after"] for g in h.generations] == [b"s1", b"s2"]
    assert len(h.images) == 7  # 3 + 3 candidates and one shared reference
    assert [u.channel for u in h.units] == list(range(N_UNITS))


def test_unit_responses_view_gives_one_row_per_unit(repo, db_engine):
    sid, all_ids = _two_generations(repo)
    with db_engine.connect() as c:
        rows = c.execute(
            sa.text("SELECT channel, count FROM unit_responses WHERE presentation_id = :p ORDER BY position"),
            {"p": all_ids[1][1]},
        ).all()
    assert rows == [(0, 11), (1, 0), (2, 0), (3, 1)]


def test_per_unit_rows_are_grouped_into_one_response_per_presentation(repo):
    sid = repo.create_session(config={}, seed=1, mode="live", operator="a", subject_id="b", rig="c")
    unit_ids = repo.add_units(sid, [(5, 1), (7, 2)])
    ids = repo.begin_generation(sid, 0, _proposals(0), b"s")
    rows = [(ids[0], unit_ids[1], 4, 1, 50.0, 200.0), (ids[0], unit_ids[0], 3, 0, 50.0, 200.0)]
    (rec,) = group_unit_rows(rows, unit_ids, baseline_window_ms=(-50.0, 0.0))
    assert list(rec.counts) == [3, 4] and list(rec.baseline_counts) == [0, 1]
    assert repo.record_responses(sid, [rec]).inserted == 1
    with pytest.raises(ValueError, match="missing"):
        group_unit_rows(rows[:1], unit_ids)


def test_content_addressed_stimulus_files(db_engine, tmp_path):
    repo = Repository(db_engine, stimulus_dir=tmp_path / "stimuli")
    sid = _session(repo)
    props = _proposals(0)
    repo.begin_generation(sid, 0, props, b"s")
    images = repo.generation_images(sid, 0)
    files = sorted(p.name for p in (tmp_path / "stimuli").rglob("*.png"))
    assert files == sorted({f"{im.stimulus_sha256}.png" for im in images}) and len(files) == 4
    assert images[3].png == props[3].image
    with db_engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM stimuli WHERE data IS NULL AND path IS NOT NULL")).scalar() == 4


def test_event_log(repo):
    sid = _session(repo)
    a = repo.log_event(sid, "operator", "pause pressed", {"by": "ana"})
    b = repo.log_event(None, "connection", "display client connected", level="warning")
    assert [e["message"] for e in repo.events(sid)] == ["pause pressed"]
    assert repo.events(sid, after_id=a) == []
    assert repo.events(None)[0]["id"] == b and repo.events(None)[0]["level"] == "warning"
    with pytest.raises(ValueError, match="level"):
        repo.log_event(sid, "x", "y", level="loud")


def test_session_status(repo):
    sid = _session(repo)
    repo.set_session_status(sid, "paused")
    assert repo.session_summary(sid).finished_at is None
    repo.set_session_status(sid, "completed")
    s = repo.session_summary(sid)
    assert s.status == "completed" and s.finished_at is not None
    with pytest.raises(GenerationStateError, match="completed"):
        repo.begin_generation(sid, 0, _proposals(0), b"s")
    with pytest.raises(SessionNotFound):
        repo.set_session_status(uuid.uuid4(), "paused")


def test_batched_binary_copy_stores_exactly_what_was_sent(repo):
    """Mixed batch: with and without baseline, numpy and list counts, extreme values, float-typed integers."""
    sid = _session(repo)
    ids = repo.begin_generation(sid, 0, _proposals(0, n_cand=3, n_ref=3), b"s")
    big = 2**31 - 1
    records = [
        ResponseRecord(ids[0], np.array([0, 1, 2, big], dtype=np.int64), 50.0, 200.0),
        ResponseRecord(ids[1], [5, 6, 7, 8], 40.5, 190.25, np.array([1, 0, 0, 2], dtype=np.uint8), -50.0, 0.0),
        ResponseRecord(ids[2], np.array([1.0, 2.0, 3.0, 4.0]), 50.0, 200.0),
        ResponseRecord(ids[3], [9, 9, 9, 9], 50.0, 200.0, [0, 0, 0, 0], -25.0, -5.0),
    ]
    assert repo.record_responses(sid, records).inserted == 4
    h = repo.load_history(sid)
    row = {pid: i for i, pid in enumerate(h.presentation_id)}
    assert h.counts[row[ids[0]]].tolist() == [0, 1, 2, big] and h.baseline_counts[row[ids[0]]].tolist() == [-1] * 4
    assert h.counts[row[ids[1]]].tolist() == [5, 6, 7, 8] and h.baseline_counts[row[ids[1]]].tolist() == [1, 0, 0, 2]
    assert h.window_ms[row[ids[1]]].tolist() == [40.5, 190.25]
    assert h.counts[row[ids[2]]].tolist() == [1, 2, 3, 4]
    # all-alike batch (the vectorised path) and the row-by-row path store the same bytes
    uniform = [
        ResponseRecord(pid, np.arange(4) + k, 50.0, 200.0, np.ones(4, int), -50.0, 0.0) for k, pid in enumerate(ids[4:])
    ]
    assert repo.record_responses(sid, uniform).inserted == 2
    again = repo.record_responses(sid, [ResponseRecord(ids[4], [0, 1, 2, 3], 50.0, 200.0, [1, 1, 1, 1], -50.0, 0.0)])
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 1, ())
    bad = repo.record_responses(sid, [ResponseRecord(ids[5], [0.5, 1, 2, 3], 50.0, 200.0)])
    assert bad.rejected == (ids[5],)


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (64, 64, 3), (224, 224, 3)])
def test_stimulus_png_decodes_to_the_displayed_pixels(shape):
    """The hand-rolled PNG writer (up filter, zlib) gives exactly the 8-bit pixels any reader returns."""
    import io

    from PIL import Image

    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape).astype(np.float32)
    smooth = np.broadcast_to(np.linspace(0, 1, shape[1], dtype=np.float32)[None, :, None], shape)
    for img in (image, smooth, (image * 255).astype(np.uint8)):
        png = encode_png(img)
        decoded = Image.open(io.BytesIO(png))
        expected = img if img.dtype == np.uint8 else np.clip(np.rint(img.astype(np.float64) * 255), 0, 255)
        assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), expected.astype(np.uint8))
        assert encode_png(img) == png  # deterministic: equal pixels, equal content address
    with pytest.raises(ValueError, match="NaN"):
        encode_png(np.full(shape, np.nan))
