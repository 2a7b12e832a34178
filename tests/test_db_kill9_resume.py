"""A stored in-silico session killed with SIGKILL at arbitrary moments and resumed (``snslab resume``)
ends exactly like an uninterrupted run with the same seed: same codes, same responses for the same
presentations, nothing lost, nothing duplicated."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

pytest_plugins = ["db_fixtures"]
REPO = Path(__file__).resolve().parents[1]

CONFIG = """
mode = "invariance"
seed = 11
population = 40
generations = {generations}
reference_repeats = 4
stages = ["pixel"]
output = "{out}"
[generator]
name = "dct"
code_size = 4096
image_size = 64
channels = 3
[subject]
name = "complex-cell"
image_size = 64
[noise]
kind = "poisson"
[reference]
source = "code"
path = "{ref}"
check_repeats = 0  # a random code: this test is about resuming, not about the reference's strength
"""


def _cli(env, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "server.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _session_rows(engine, sid):
    with engine.connect() as c:
        return c.execute(text(
            "SELECT g.index AS gen, p.order_in_batch AS slot, p.kind, p.code, r.counts, p.superseded"
            " FROM presentations p JOIN generations g ON g.id = p.generation_id"
            " LEFT JOIN responses r ON r.presentation_id = p.id WHERE p.session_id = :s"
            " ORDER BY g.index, p.order_in_batch, p.attempt"), {"s": sid}).all()


def _completed(engine, sid=None):
    with engine.connect() as c:
        q = "SELECT count(*) FROM generations WHERE status = 'completed'"
        return c.execute(text(q + (" AND session_id = :s" if sid else "")), {"s": sid} if sid else {}).scalar()


def _proposed(engine, sid):
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM generations WHERE session_id = :s AND status = 'proposed'"),
                         {"s": sid}).scalar()


def test_kill9_at_random_moments_then_resume_equals_uninterrupted(db_url, db_engine, tmp_path):
    env = dict(os.environ, DATABASE_URL=db_url.render_as_string(hide_password=False), MPLBACKEND="Agg")
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npy"
    np.save(ref, rng.normal(0, 0.6, 4096))
    generations = 24
    cfg = tmp_path / "probe.toml"
    cfg.write_text(CONFIG.format(generations=generations, out=tmp_path / "out", ref=ref))

    # Uninterrupted run.
    p = _cli(env, "insilico", str(cfg), "--store", "--quiet")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    full_sid = uuid.UUID(out.split("invariance=")[1].split()[0])

    # The same run, killed three times at moments drawn at random, each time resumed.
    p = _cli(env, "insilico", str(cfg), "--store", "--quiet")
    with db_engine.connect() as c:
        deadline = time.monotonic() + 120
        sid = None
        while sid is None and time.monotonic() < deadline:
            sid = c.execute(text("SELECT id FROM sessions WHERE id <> :f ORDER BY created_at DESC LIMIT 1"),
                            {"f": full_sid}).scalar()
            time.sleep(0.01)
    assert sid is not None
    kills = in_flight = 0
    for target, mid_generation in ((3, True), (9, False), (16, True)):
        while _completed(db_engine, sid) < target and p.poll() is None:
            time.sleep(0.005)
        if mid_generation:  # right after a generation's proposals were committed, before its responses
            while p.poll() is None and not _proposed(db_engine, sid):
                time.sleep(0.001)
        else:  # at a moment drawn at random
            time.sleep(float(rng.uniform(0, 0.05)))
        if p.poll() is not None:
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        assert _completed(db_engine, sid) < generations
        in_flight += _proposed(db_engine, sid)
        p = _cli(env, "resume", str(sid))
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert kills == 3 and in_flight >= 1  # at least one kill landed between proposal and scoring

    a, b = _session_rows(db_engine, full_sid), _session_rows(db_engine, sid)
    active_b = [r for r in b if not r.superseded]
    assert len(a) == len(active_b) >= generations * 44  # 40 candidates + 4 references, + any re-tests
    assert len({(r.gen, r.slot) for r in active_b}) == len(active_b)  # no slot twice
    assert all(r.counts is not None for r in active_b)  # nothing lost
    for x, y in zip(a, active_b):
        assert (x.gen, x.slot, x.kind) == (y.gen, y.slot, y.kind)
        assert x.counts == y.counts
        assert (x.code is None and y.code is None) or bytes(x.code) == bytes(y.code)
