"""End to end with real processes: PostgreSQL, ZeroMQ on loopback, the PsychoPy display client under Xvfb
(a subprocess, killed with SIGKILL and restarted mid-generation) and the simulated recording bridge.

What must hold: the session completes; every batch slot has exactly one answered presentation, stored
with its flip time, onset source and response; nothing is lost or counted twice; and the probe's result is
the one the same session without the kill gives (the re-shown presentations counted at their new attempts),
and up to the first re-show the in-silico run with the same seed.
"""


import numpy as np
import pytest

from display_fixtures import DisplayProcess, display_env, requires_display_stack, xvfb  # noqa: F401
from waiting import wait_for
from server.config import parse_config
from server.insilico import run_probe
from server.engine.subjects import make_subject
from server.service import SessionCreate, SessionService
from test_live_loop import FAST, PROBE, _bridge, _reference_code
from twins import sim_twin, stored_slots

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

    rows = stored_slots(db_engine, sid)
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
    attempt = {(r.gen, r.slot): r.attempt for r in active}
    twin = sim_twin(repo, sid, rows, make_subject("complex-cell", image_size=16, wavelength=6.0), probe["seed"],
                    "invariance", 0.150)
    for a, b in zip(loop.runner.reports, twin.reports, strict=True):
        assert np.array_equal(a.responses, b.responses)
    assert np.array_equal(loop.runner.search.result().code, twin.search.result().code)
    first_reshown = min(gen for (gen, _), k in attempt.items() if k > 0)
    insilico = run_probe(parse_config(probe | {"reference": {"source": "code", "path": str(ref)}}))
    for a, b in zip(loop.runner.reports[:first_reshown], insilico.probe.reports[:first_reshown], strict=True):
        assert np.array_equal(a.responses, b.responses)
