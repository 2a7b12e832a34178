"""Read-only queries behind the operator dashboard: what changed, the reference responses over time, the
baseline rate, the rig's numbers, and the rows of the exports. Kept apart from the repository (which
writes a session) so the dashboard's reads can grow without touching it; each is one or two queries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def change_marker(engine: Engine, session_id: uuid.UUID) -> tuple:
    """A tuple that changes whenever anything the dashboard shows of this session (or the session list) has:
    one cheap query, run by the single producer per watched session."""
    sql = sa.text(
        """
        SELECT s.status, s.updated_at,
               (SELECT count(*) FROM generations g WHERE g.session_id = s.id),
               (SELECT count(*) FROM generations g WHERE g.session_id = s.id AND g.status = 'completed'),
               (SELECT count(*) FROM presentations p WHERE p.session_id = s.id),
               (SELECT count(*) FROM presentations p JOIN responses r ON r.presentation_id = p.id
                 WHERE p.session_id = s.id),
               (SELECT count(*) FROM presentations p WHERE p.session_id = s.id AND p.valid IS NOT NULL),
               (SELECT coalesce(max(e.id), 0) FROM events e WHERE e.session_id = s.id),
               (SELECT count(*) FROM sessions), (SELECT max(updated_at) FROM sessions)
        FROM sessions s WHERE s.id = :sid
        """
    )
    with engine.connect() as conn:
        row = conn.execute(sql, {"sid": session_id}).first()
    return tuple(row) if row is not None else ()


@dataclass(frozen=True)
class ReferenceResponse:
    presentation_id: int
    generation: int
    order_in_batch: int
    counts: list[int]
    window_ms: tuple[float, float]
    received_at: Any


def reference_responses(engine: Engine, session_id: uuid.UUID) -> list[ReferenceResponse]:
    """Every answered, valid, active reference presentation in the order shown (generation, slot)."""
    sql = sa.text(
        """
        SELECT p.id, g.index, p.order_in_batch, r.counts, r.window_start_ms, r.window_end_ms, r.received_at
        FROM presentations p
        JOIN generations g ON g.id = p.generation_id
        JOIN responses r ON r.presentation_id = p.id
        WHERE p.session_id = :sid AND p.kind = 'reference' AND NOT p.superseded AND p.valid IS NOT FALSE
        ORDER BY g.index, p.order_in_batch, p.id
        """
    )
    with engine.connect() as conn:
        rows = conn.execute(sql, {"sid": session_id}).all()
    return [ReferenceResponse(r[0], r[1], r[2], list(r[3]), (r[4], r[5]), r[6]) for r in rows]


def baseline_by_generation(engine: Engine, session_id: uuid.UUID, n_units: int) -> list[dict[str, Any]]:
    """Per generation: the mean spontaneous rate (Hz) of each unit over its answered presentations' baseline
    windows; units without baseline counts are None."""
    if n_units <= 0:
        return []
    sql = sa.text(
        """
        SELECT g.index, u.pos,
               avg(r.baseline_counts[u.pos] * 1000.0 / nullif(r.baseline_end_ms - r.baseline_start_ms, 0)) AS hz,
               count(r.baseline_counts[u.pos]) AS n
        FROM generations g
        JOIN presentations p ON p.generation_id = g.id AND NOT p.superseded AND p.valid IS NOT FALSE
        JOIN responses r ON r.presentation_id = p.id
        CROSS JOIN generate_series(1, :n) AS u(pos)
        WHERE g.session_id = :sid AND r.baseline_counts IS NOT NULL
        GROUP BY g.index, u.pos ORDER BY g.index, u.pos
        """
    )
    with engine.connect() as conn:
        rows = conn.execute(sql, {"sid": session_id, "n": n_units}).all()
    out: dict[int, dict[str, Any]] = {}
    for g, pos, hz, n in rows:
        item = out.setdefault(g, {"generation": g, "rate_hz": [None] * n_units, "n": 0})
        item["rate_hz"][pos - 1] = None if hz is None else float(hz)
        item["n"] = max(item["n"], int(n))
    return list(out.values())


def rig_numbers(engine: Engine, session_id: uuid.UUID, recent_s: float = 300.0) -> dict[str, Any]:
    """Stored timing and QC of a session: dropped frames, invalid presentations by reason (numbers in a reason
    replaced by N), presentations answered per minute (over the last ``recent_s`` and over the session), the
    rig-minus-display clock offset of recent presentations, and the recent generations' durations."""
    with engine.connect() as conn:
        t = conn.execute(sa.text(
            """
            SELECT count(*) FILTER (WHERE p.valid IS NOT NULL) AS shown,
                   coalesce(sum(p.dropped_frames), 0) AS dropped,
                   count(*) FILTER (WHERE p.dropped_frames > 0) AS with_drops,
                   count(*) FILTER (WHERE p.valid = false) AS invalid
            FROM presentations p WHERE p.session_id = :sid
            """), {"sid": session_id}).one()
        reasons = conn.execute(sa.text(
            """
            SELECT regexp_replace(reason, '[0-9]+(\\.[0-9]+)?', 'N', 'g') AS why, count(*)
            FROM presentations p, unnest(p.qc_reasons) AS reason
            WHERE p.session_id = :sid AND p.valid = false
            GROUP BY why ORDER BY count(*) DESC, why LIMIT 20
            """), {"sid": session_id}).all()
        rate = conn.execute(sa.text(
            """
            WITH a AS (SELECT r.received_at FROM responses r JOIN presentations p ON p.id = r.presentation_id
                       WHERE p.session_id = :sid)
            SELECT count(*), min(received_at), max(received_at),
                   count(*) FILTER (WHERE received_at > (SELECT max(received_at) FROM a) - make_interval(secs => :recent)),
                   now()
            FROM a
            """), {"sid": session_id, "recent": recent_s}).one()
        offset = conn.execute(sa.text(
            """
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY o), count(*) FROM (
              SELECT p.rig_onset - p.display_onset AS o FROM presentations p
              WHERE p.session_id = :sid AND p.rig_onset IS NOT NULL AND p.display_onset IS NOT NULL
              ORDER BY p.id DESC LIMIT 200) x
            """), {"sid": session_id}).one()
        gens = conn.execute(sa.text(
            """
            SELECT extract(epoch FROM completed_at - proposed_at) FROM generations
            WHERE session_id = :sid AND status = 'completed' AND completed_at IS NOT NULL
            ORDER BY index DESC LIMIT 5
            """), {"sid": session_id}).scalars().all()
    n, first, last, recent, now = rate
    span_min = (last - first).total_seconds() / 60 if n and last > first else None
    recent_min = min(recent_s, (last - first).total_seconds()) / 60 if span_min else None
    return {
        "presentations_shown": int(t.shown),
        "dropped_frames": int(t.dropped),
        "presentations_with_dropped_frames": int(t.with_drops),
        "presentations_invalid": int(t.invalid),
        "invalid_by_reason": {why: int(c) for why, c in reasons},
        "presentations_per_minute": None if not recent_min else recent / recent_min,
        "presentations_per_minute_session": None if not span_min else n / span_min,
        "last_answer_age_s": None if not n else max(0.0, (now - last).total_seconds()),
        "clock_offset_s": None if offset[0] is None else float(offset[0]),
        "clock_offset_n": int(offset[1]),
        "recent_generation_s": [float(x) for x in gens if x is not None],
    }


def front_rows(engine: Engine, session_id: uuid.UUID, generation: int | None, unit_position: int = 0
               ) -> tuple[int | None, list[dict[str, Any]]]:
    """The first front of one generation (default: the newest completed one): (generation, rows with the
    presentation, distances, fitness, response, counts of every unit and the stimulus hash)."""
    with engine.connect() as conn:
        if generation is None:
            generation = conn.execute(sa.text(
                "SELECT max(index) FROM generations WHERE session_id = :sid AND status = 'completed'"),
                {"sid": session_id}).scalar()
            if generation is None:
                return None, []
        rows = conn.execute(sa.text(
            """
            SELECT p.id, p.order_in_batch, p.code_index, sc.distances, sc.fitness, sc.selected, r.counts,
                   encode(st.sha256, 'hex') AS sha
            FROM scores sc
            JOIN presentations p ON p.id = sc.presentation_id
            JOIN generations g ON g.id = sc.generation_id
            JOIN responses r ON r.presentation_id = p.id
            JOIN stimuli st ON st.id = p.stimulus_id
            WHERE g.session_id = :sid AND g.index = :g AND sc.front_index = 0
            ORDER BY sc.fitness DESC NULLS LAST, p.order_in_batch
            """), {"sid": session_id, "g": generation}).all()
    return generation, [
        {"presentation_id": r.id, "order_in_batch": r.order_in_batch, "code_index": r.code_index,
         "distances": r.distances or {}, "fitness": r.fitness, "selected": r.selected,
         "response": r.counts[unit_position] if r.counts and len(r.counts) > unit_position else None,
         "counts": list(r.counts or []), "stimulus_sha256": r.sha}
        for r in rows
    ]


def generation_tiles(engine: Engine, session_id: uuid.UUID, generation: int) -> list[dict[str, Any]]:
    """The active presentations of one generation in batch order, with validity, reasons and every unit's
    counts (None until answered): the dashboard's image grid in one query."""
    sql = sa.text(
        """
        SELECT p.id, p.order_in_batch, p.kind, encode(st.sha256, 'hex') AS sha, p.valid, p.qc_reasons,
               p.dropped_frames, r.counts
        FROM presentations p
        JOIN generations g ON g.id = p.generation_id
        JOIN stimuli st ON st.id = p.stimulus_id
        LEFT JOIN responses r ON r.presentation_id = p.id
        WHERE p.session_id = :sid AND g.index = :g AND NOT p.superseded
        ORDER BY p.order_in_batch
        """
    )
    with engine.connect() as conn:
        rows = conn.execute(sql, {"sid": session_id, "g": generation}).all()
    return [{"presentation_id": r.id, "order_in_batch": r.order_in_batch, "kind": r.kind, "stimulus_sha256": r.sha,
             "valid": r.valid, "qc_reasons": list(r.qc_reasons or []), "dropped_frames": r.dropped_frames,
             "counts": None if r.counts is None else list(r.counts)} for r in rows]


def list_marker(engine: Engine) -> tuple:
    """Changes whenever a session is added or changes status (the session list must be redrawn)."""
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text("SELECT count(*), max(updated_at) FROM sessions")).one())
