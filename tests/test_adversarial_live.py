"""The adversarial probe's default search (server.engine.adversarial, issue 12) in a live session, run as an
operator runs it: ``snslab server`` (PostgreSQL), ``snslab bridge --adapter sim``, a scripted display and
``snslab session create``, each in its own process; the stored session replays bit for bit."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa

from api_fixtures import api_db_url, url_text  # noqa: F401  (fixture)
from live_rig import Rig, session_status
from server_process import ROOT
from waiting import wait_for

pytest_plugins = ["db_fixtures"]

TOKEN = "adversarial-operator-token"
GEN = {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1}
WINDOW = (10.0, 60.0)  # ms


def _spec(probe: dict, **extra) -> dict:
    return {"operator": "ana", "subject_id": "m12", "rig": "rig-adv", "units": ["sim:0"], "on_ms": 20,
            "off_ms": 20, "response_window_ms": list(WINDOW), "compute_check": "off", "probe": probe, **extra}


@pytest.mark.slow
def test_a_live_adversarial_session_runs_the_shell_search_and_replays(api_db_url, tmp_path):
    rig = Rig(url_text(api_db_url), tmp_path, TOKEN, [
        "--adapter", "sim", "--session-seed", "4", "--mode", "maximize", "--subject-param", "image_size=16",
        "--subject-param", "wavelength=6.0", "--response-window", f"{WINDOW[0]:g},{WINDOW[1]:g}",
        "--baseline-window=-20,0"]).start()
    try:
        engine = sa.create_engine(url_text(api_db_url))
        maximize = {"mode": "maximize", "seed": 4, "population": 8, "generations": 5, "generator": GEN,
                    "optimizer": {"name": "sepcma", "sigma0": 1.0}, "reference": {"check_repeats": 6}}
        made = rig.create(_spec(maximize), "max")
        assert made.returncode == 0, made.stderr
        mid = json.loads(made.stdout)["id"]
        assert wait_for(lambda: session_status(engine, mid) in ("failed", "completed"), 240, 0.05), rig.logs()
        assert session_status(engine, mid) == "completed", rig.logs()

        probe = {"mode": "adversarial", "seed": 4, "population": 6, "generations": 7, "generator": GEN,
                 "stages": ["pixel"], "reference_repeats": 2}  # no [optimizer]: the adversarial default
        made = rig.create(_spec(probe, reference={"source": "maximize-session", "session_id": mid}), "adv")
        assert made.returncode == 0, made.stderr
        pid = json.loads(made.stdout)["id"]
        assert json.loads(made.stdout)["config"]["probe"]["optimizer"]["name"] == "shell"  # recorded explicitly
        assert wait_for(lambda: session_status(engine, pid) in ("failed", "completed"), 240, 0.05), rig.logs()
        assert session_status(engine, pid) == "completed", rig.logs()
        with engine.connect() as c:
            states = c.execute(sa.text("SELECT optimizer_state_after FROM generations WHERE session_id = :s"
                                       " ORDER BY index"), {"s": pid}).scalars().all()
        assert len(states) == 7
        from server.engine.optimizers import Optimizer

        opts = [Optimizer.restore(pickle.loads(bytes(s))["optimizer"]) for s in states]
        assert {o.name for o in opts} == {"shell"} and [o.generation for o in opts] == list(range(1, 8))
        # the shell moved: its radius answered the measured changes (the bisection), generation by generation
        assert len({round(o.rho, 12) for o in opts}) > 1 and np.isfinite([o.rho for o in opts]).all()
        rep = subprocess.run([sys.executable, "-m", "server.cli", "replay", pid], cwd=ROOT, env=rig.env,
                             capture_output=True, text=True, timeout=300)
        assert rep.returncode == 0 and "bit for bit" in rep.stdout, rep.stdout + rep.stderr
    finally:
        rig.stop()
