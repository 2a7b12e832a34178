"""End to end with real processes: PostgreSQL, ZeroMQ on loopback, the PsychoPy display client under Xvfb
(a subprocess, killed with SIGKILL and restarted mid-generation) and the simulated recording bridge.

What must hold: the session completes; every batch slot has exactly one answered presentation, stored
with its flip time, onset source and response; nothing is lost or counted twice; and the probe's result is
the one the same session without the kill gives (the re-shown presentations counted at their new attempts),
and up to the first re-show the in-silico run with the same seed.
"""


import uuid

import numpy as np
import pytest
from sqlalchemy import text

from display_fixtures import DisplayProcess, display_env, requires_display_stack, xvfb  # noqa: F401
from waiting import wait_for
from server.config import parse_config
from server.insilico import run_probe
from server.engine.base import SeedStreams, as_displayed, presentation_counts, presentation_rng
from server.engine.subjects import make_subject
from server.service import SessionCreate, SessionService
from server.session_runner import Counts
from server.stored import rebuild
from test_live_loop import FAST, PROBE, _bridge, _reference_code

pytest_plugins = ["db_fixtures"]
pytestmark = [requires_display_stack, pytest.mark.slow]

GENERATIONS = 6


def _display(env, address, tmp_path, n):
    return DisplayProcess(env, ["--server", address, "--windowed", "--size", "320x240", "--client-id",
                                "e2e-display", "--heartbeat", "0.2"], tmp_path / f"display{n}.log")


def test_closed_loop_with_psychopy_survives_a_display_kill_and_matches_in_silico(repo, db_engine, display_env,
                                                                                 tmp_path):
    ref = _reference_code(tmp_path)
    probe = PROBE | {"generations": GENERATIONS}
    service = SessionService(repo, bind="tcp://127.0.0.1:*", timing=FAST)
    display = _display(display_env, service.wire_address, tmp_path, 1)
    bridge, stop, th = _bridge(service.wire_address, probe["seed"], "invariance")
    restarted = None
    try:
        assert wait_for(lambda: sum(c["alive"] for c in service.clients()) == 2, 120), display.log()
        sid = service.create(SessionCreate(operator="e2e", subject_id="M2", probe=probe,
                                           reference={"source": "code", "path": str(ref)}, units=["sim:0"]))
        service.start(sid)
        loop = service.loop
        # Kill the display in the middle of generation 2: some of its presentations shown, some not.
        assert wait_for(lambda: len(loop.runner.reports) >= 2 and loop.stats.reports >= 2 * 10 + 4, 120)
        display.kill9()
        restarted = _display(display_env, service.wire_address, tmp_path, 2)
        assert service.wait(sid, 240), f"{loop.stats}\n{restarted.log()[-2000:]}"
    finally:
        stop.set()
        th.join(2)
        bridge.peer.close()
        for d in (display, restarted):
            if d is not None:
                d.close()
        service.close()

    with db_engine.connect() as c:
        rows = c.execute(text(
            "SELECT g.index AS gen, p.order_in_batch AS slot, p.attempt, p.superseded, p.display_onset,"
            " p.onset_source,"
            " p.valid, r.counts FROM presentations p JOIN generations g ON g.id = p.generation_id"
            " LEFT JOIN responses r ON r.presentation_id = p.id WHERE p.session_id = :s"), {"s": sid}).all()
    active = [r for r in rows if not r.superseded]
    slots = {(r.gen, r.slot) for r in active}
    shown = sum(len(r.responses) for r in loop.runner.reports) + GENERATIONS * 2  # + 2 references each
    assert len(active) == len(slots) == shown >= GENERATIONS * (8 + 2)  # one active presentation per slot
    assert all(r.counts is not None for r in active)  # every one answered
    assert all(r.display_onset is not None and r.onset_source == "photodiode" for r in active)
    assert sum(r.counts is not None for r in rows) == len(active)  # no response stored twice
    # the restarted display was sent what its predecessor had not shown, and showed it
    assert any(r.attempt > 0 for r in loop.ledger.reports.values())

    # what the killed display had not reported was shown again as new stored attempts
    assert any(r.attempt > 0 for r in active)

    # The twin: the same session without the kill, given the simulated rig's counts of the same (final)
    # attempts. Before the first re-show it is exactly the in-silico run with the same seed.
    twin = rebuild(repo, uuid.UUID(str(sid))).runner(None)
    subject = make_subject("complex-cell", image_size=16, wavelength=6.0)
    count_seed = SeedStreams(probe["seed"]).noise_seed("invariance")
    attempt = {(r.gen, r.slot): r.attempt for r in active}
    stored_counts = {(r.gen, r.slot): list(r.counts) for r in active}
    while not twin.done:
        twin.next_batch()
        g = twin.open.batch.generation
        items = []
        for p in twin.unanswered():
            if p.generation != g:
                continue
            rate = subject.rate(as_displayed(p.image)[None])[0]
            counts = presentation_counts(rate, 0.150, presentation_rng(count_seed, g, p.order, attempt[(g, p.order)]))
            assert list(counts) == stored_counts[(g, p.order)], (g, p.order)
            items.append(Counts(p.presentation_id, counts))
        assert twin.add_counts(items) is not None
    for a, b in zip(loop.runner.reports, twin.reports, strict=True):
        assert np.array_equal(a.responses, b.responses)
    assert np.array_equal(loop.runner.search.result().code, twin.search.result().code)
    first_reshown = min(gen for (gen, _), k in attempt.items() if k > 0)
    insilico = run_probe(parse_config(probe | {"reference": {"source": "code", "path": str(ref)}}))
    for a, b in zip(loop.runner.reports[:first_reshown], insilico.probe.reports[:first_reshown], strict=True):
        assert np.array_equal(a.responses, b.responses)
