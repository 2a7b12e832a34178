"""The repository: every read and write of recordings, behind one object.

    create_session -> add_units
    begin_generation      proposals + stimuli + optimizer state, ONE transaction, committed before dispatch
    record_timings        display/rig onsets and QC, batched, first write wins
    record_responses      spike counts, batched (COPY), idempotent per presentation, first write wins
    generation_data       what the optimizer is told: read back from the database, i.e. committed
    complete_generation   scores + optimizer state after tell, ONE transaction
    load_resume_point     after a crash: the last completed generation and the in-flight one

The parts live by job: sessions and units (server/db/sessions.py), the write path (server/db/writes.py), the queries (server/db/queries.py), the
stimulus store (server/db/stimuli.py), the shared lock and event log (server/db/repo_base.py), the bulk
COPY helper (server/db/bulk.py) and the PNG codec (server/png.py). The records are in server/db/records.py.

    >>> repo = Repository(engine)                                               # doctest: +SKIP
    >>> sid = repo.create_session(config={"probe": "invariance"}, seed=7, mode="insilico",
    ...                           operator="ana", subject_id="m01", rig="sim")
    >>> repo.add_units(sid, [(12, 1, "V4 12a")])
    >>> ids = repo.begin_generation(sid, 0, [Proposal(png, "candidate", 0, code=z, code_index=0)], state)
    >>> repo.record_responses(sid, [ResponseRecord(ids[0], [4], 50.0, 200.0)])
    >>> data = repo.generation_data(sid, 0)                                     # -> optimizer.tell(...)
    >>> repo.complete_generation(sid, 0, [ScoreRecord(ids[0], {"pixel": 3.2}, 0, 1.5)], new_state)
"""

from __future__ import annotations

from server.db.queries import Queries
from server.db.sessions import SessionWrites
from server.db.writes import WritePath


class Repository(SessionWrites, WritePath, Queries):
    """All reads and writes of recordings. Thread-safe (one pooled connection per call).

    ``Repository(engine, stimulus_dir=None)``: with ``stimulus_dir`` set, images are stored as
    content-addressed files there, not as BYTEA.
    """


__all__ = ["Repository"]
