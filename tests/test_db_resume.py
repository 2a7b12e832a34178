"""Crash safety: a real process writing a session is SIGKILLed mid-generation, restarted, and the finished
session equals an uninterrupted run with the same seed, with nothing lost or duplicated."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import db_resume_driver as driver
import numpy as np
import pytest

pytest_plugins = ["db_fixtures"]

DRIVER = Path(__file__).resolve().parent / "db_resume_driver.py"
ROOT = DRIVER.parents[1]
SEED = 20260611
GENERATIONS = 5
BATCH = driver.POPULATION + driver.N_REFERENCE


def _start(db_url, sid: uuid.UUID, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": db_url.render_as_string(hide_password=False)}
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(sid), "--generations", str(GENERATIONS), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(proc: subprocess.Popen, wanted: str, timeout: float = 120.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.strip() == wanted:
                return lines
    proc.kill()
    raise AssertionError(f"driver never printed {wanted!r}: {lines} / {proc.stderr.read()[-2000:]}")


def _sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _finish(db_url, sid) -> None:
    proc = _start(db_url, sid)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().endswith("DONE")


def _snapshot(repo, sid) -> dict:
    """What must be identical: codes, images, responses, scores and optimizer/RNG states, per active slot."""
    h = repo.load_history(sid, with_states=True)
    active = ~h.superseded
    return {
        "generation": h.generation[active],
        "order": h.order_in_batch[active],
        "kind": h.kind[active],
        "code_index": h.code_index[active],
        "codes": h.codes[active],
        "sha": [s for s, a in zip(h.stimulus_sha256, active) if a],
        "counts": h.counts[active],
        "front": h.front_index[active],
        "fitness": h.fitness[active],
        "selected": h.selected[active],
        "states": [
            (
                g["index"],
                g["status"],
                g["optimizer_state_before"],
                g["rng_state_before"],
                g["optimizer_state_after"],
                g["rng_state_after"],
            )
            for g in h.generations
        ],
    }


def _assert_same_session(repo, sid, ref_sid) -> None:
    got, want = _snapshot(repo, sid), _snapshot(repo, ref_sid)
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], np.ndarray):
            assert np.array_equal(got[key], want[key], equal_nan=want[key].dtype.kind == "f"), key
        else:
            assert got[key] == want[key], key


def _assert_nothing_lost_or_duplicated(repo, sid) -> None:
    h = repo.load_history(sid)
    active = ~h.superseded
    # exactly one active presentation per batch slot, every one shown and answered
    slots = list(zip(h.generation[active], h.order_in_batch[active]))
    assert len(slots) == len(set(slots)) == GENERATIONS * BATCH
    assert (h.counts[active] >= 0).all() and not np.isnan(h.display_onset[active]).any()
    # a superseded presentation was re-shown exactly once per attempt: attempts chain without gaps
    for g, k in set(zip(h.generation[~active], h.order_in_batch[~active])):
        attempts = sorted(h.attempt[(h.generation == g) & (h.order_in_batch == k)])
        assert attempts == list(range(len(attempts)))
    summary = repo.session_summary(sid)
    assert (summary.status, summary.n_completed_generations, summary.n_answered) == (
        "completed",
        GENERATIONS,
        GENERATIONS * BATCH,
    )
    kinds = {e["kind"] for e in repo.events(sid)}
    assert not kinds & {"response_conflict", "response_rejected", "timing_conflict", "generation_conflict"}


@pytest.fixture
def reference_session(repo):
    """The same session, run without interruption in this process."""
    sid = driver.setup_session(repo, SEED)
    driver.run(repo, sid, GENERATIONS, out=open(os.devnull, "w"))
    return sid


@pytest.mark.slow
def test_sigkill_at_each_phase_then_restart_equals_uninterrupted_run(repo, db_url, reference_session):
    sid = driver.setup_session(repo, SEED)
    kills = ["1:0:begun", "2:3:shown", "3:2:shown", "4:0:told"]
    for point in kills:
        proc = _start(db_url, sid, "--pause", point)
        _wait_for_line(proc, "PAUSED")
        _sigkill(proc)
        rp = repo.load_resume_point(sid)
        g, k, phase = point.split(":")
        assert rp.next_index == int(g)
        assert rp.in_flight is not None and rp.in_flight.index == int(g)
        if phase == "shown":  # the killed slot was shown but its answer never reached the database
            (waiting,) = [p for p in rp.in_flight.unanswered if p.order_in_batch == int(k)]
            assert waiting.shown
        if phase == "told":
            assert rp.in_flight.unanswered == []
    _finish(db_url, sid)

    _assert_same_session(repo, sid, reference_session)
    _assert_nothing_lost_or_duplicated(repo, sid)
    h = repo.load_history(sid)
    # shown, never answered, then: odd slot 3 of generation 2 re-shown; even slot 2 of generation 3 answered late
    assert h.attempt[(h.generation == 2) & (h.order_in_batch == 3)].tolist() == [0, 1]
    assert h.attempt[(h.generation == 3) & (h.order_in_batch == 2)].tolist() == [0]
    assert h.superseded.sum() == 1


@pytest.mark.slow
def test_sigkill_at_random_moments_then_restart_equals_uninterrupted_run(repo, db_url, reference_session):
    sid = driver.setup_session(repo, SEED)
    rnd = random.Random(SEED)
    killed_mid_generation = 0
    for _ in range(3):
        proc = _start(db_url, sid, "--delay", "0.01")
        _wait_for_line(proc, "STARTED")
        time.sleep(rnd.uniform(0.05, 0.6))
        if proc.poll() is None:
            _sigkill(proc)
            killed_mid_generation += repo.load_resume_point(sid).in_flight is not None
    assert killed_mid_generation >= 1  # the kills did land inside generations
    _finish(db_url, sid)
    _assert_same_session(repo, sid, reference_session)
    _assert_nothing_lost_or_duplicated(repo, sid)
