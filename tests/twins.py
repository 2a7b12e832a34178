"""The twin of a live session on the simulated rig: the stored session re-run without interruptions, each slot
counted as the simulated neuron counts its final (stored, not superseded) attempt."""

import uuid

from sqlalchemy import text

from server.engine.base import SeedStreams, as_displayed, presentation_counts, presentation_rng
from server.session_runner import Counts
from server.stored import rebuild


def stored_slots(db_engine, sid) -> list:
    """Every stored presentation of the session with its slot, attempt and response (None if unanswered)."""
    with db_engine.connect() as c:
        return c.execute(text(
            "SELECT g.index AS gen, p.order_in_batch AS slot, p.attempt, p.superseded, p.kind, p.display_onset,"
            " p.onset_source, p.valid, r.presentation_id IS NOT NULL AS answered, r.counts FROM presentations p"
            " JOIN generations g ON g.id = p.generation_id LEFT JOIN responses r ON r.presentation_id = p.id"
            " WHERE p.session_id = :s ORDER BY 1, 2, 3"), {"s": sid}).all()


def sim_twin(repo, sid, rows, subject, seed: int, mode: str, window_s: float):
    """Run the stored session's plan again from its seed, answering each slot with the simulated rig's counts
    for the attempt that answered it live; every count must equal the stored one. Returns the finished runner."""
    active = {(r.gen, r.slot): r for r in rows if not r.superseded}
    twin = rebuild(repo, uuid.UUID(str(sid))).runner(None)
    count_seed = SeedStreams(seed).noise_seed(mode)
    while not twin.done:
        twin.next_batch()
        g = twin.open.batch.generation
        items = []
        for p in twin.unanswered():
            if p.generation != g:
                continue
            live = active[(g, p.order)]
            rate = subject.rate(as_displayed(p.image)[None])[0]
            counts = presentation_counts(rate, window_s, presentation_rng(count_seed, g, p.order, live.attempt))
            assert list(counts) == list(live.counts), (g, p.order)
            items.append(Counts(p.presentation_id, counts))
        assert twin.add_counts(items) is not None
    return twin
