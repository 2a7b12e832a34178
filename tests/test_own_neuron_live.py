"""A lab's own model neuron (issue 12, item 4) on the live paths, every part started through the shipped
commands: ``snslab bridge --adapter sim --subject python --subject-param factory=examples.my_neuron:make``
(the simulated rig's neuron) and ``snslab virtual-rig --subject python ...`` (the acquisition system's),
each with ``snslab server`` and a display.

What must hold: the session completes; every stored count is the one the user's neuron gives (the simulated
bridge's keyed counts equal an in-silico twin that calls ``examples.my_neuron:make``; the virtual rig's equal
its truth); and the stored recording identity names the factory string and its parameters, never the object.
"""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa

from api_fixtures import api_db_url, url_text  # noqa: F401  (fixture)
from display_fixtures import display_env, requires_display_stack, xvfb  # noqa: F401  (fixtures)
from live_rig import Rig
from twins import sim_twin, stored_slots

pytest_plugins = ["db_fixtures"]


TOKEN = "own-neuron-token"
FACTORY = "examples.my_neuron:make"
SEED = 7
WINDOW = (10.0, 60.0)
# colour images: the colour-opponent cell is blind to grey ones
PROBE = {"mode": "maximize", "seed": SEED, "population": 4, "generations": 3,
         "generator": {"name": "dct", "code_size": 48, "image_size": 16, "channels": 3},
         "optimizer": {"name": "sepcma", "sigma0": 1.5}, "reference": {"check_repeats": 0}}


def _recordings(engine, sid) -> list[dict]:
    with engine.connect() as c:
        return [dict(r) for r in c.execute(sa.text("SELECT identity FROM recordings WHERE session_id = :s"),
                                           {"s": sid}).scalars()]


def _no_objects(identity: dict) -> None:
    assert not any(isinstance(v, str) and ("<" in v or " object at " in v) for v in identity.values()), identity


@pytest.mark.slow
def test_the_simulated_bridge_runs_a_users_own_neuron(api_db_url, tmp_path):
    from server.db import connect
    from server.settings import Settings
    from snslab_common.neurons import make_model_neuron

    url = url_text(api_db_url)
    rig = Rig(url, tmp_path, TOKEN, [
        "--adapter", "sim", "--subject", "python", "--subject-param", f"factory={FACTORY}",
        "--subject-param", "image_size=16", "--subject-param", "orientation=30.0", "--session-seed", str(SEED),
        "--mode", "maximize", "--response-window", f"{WINDOW[0]:g},{WINDOW[1]:g}", "--baseline-window=-20,0"])
    engine = sa.create_engine(url)
    try:
        rig.start()
        spec = {"operator": "ana", "subject_id": "twin-1", "units": ["sim:0"], "on_ms": 20, "off_ms": 20,
                "response_window_ms": list(WINDOW), "compute_check": "off", "probe": PROBE}
        made = rig.create(spec, "own")
        assert made.returncode == 0, made.stderr
        sid = json.loads(made.stdout)["id"]

        def status():
            with engine.connect() as c:
                return c.execute(sa.text("SELECT status FROM sessions WHERE id = :s"), {"s": sid}).scalar_one()

        import time

        deadline = time.monotonic() + 180
        while status() not in ("completed", "failed", "aborted") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status() == "completed", rig.logs()
    finally:
        rig.stop()
    # every count is the user's neuron's: the twin draws each slot's counts from examples.my_neuron:make
    rows = stored_slots(engine, sid)
    assert sum(r.counts is not None for r in rows if not r.superseded) == 3 * 4
    db = connect(Settings(database_url=url))
    try:
        neuron = make_model_neuron("python", factory=FACTORY, image_size=16, orientation=30.0)
        twin = sim_twin(db.repository(), sid, rows, neuron, SEED, "maximize", (WINDOW[1] - WINDOW[0]) / 1000)
    finally:
        db.close()
    assert twin.search.generation == 3
    # the storage names the factory and its parameters, never the object
    (identity,) = _recordings(engine, sid)
    assert identity["adapter"] == "sim" and identity["subject"] == "python"
    assert identity["subject.factory"] == FACTORY
    assert identity["subject.image_size"] == 16 and identity["subject.orientation"] == 30.0
    _no_objects(identity)
    uuid.UUID(sid)


@pytest.mark.slow
@requires_display_stack
def test_the_virtual_rig_runs_a_users_own_neuron(api_db_url, display_env, tmp_path):  # noqa: F811
    from rig_fixtures import UNITS, RigProcesses, wait_until

    url = url_text(api_db_url)
    rig = RigProcesses(tmp_path, display_env, "lsl", clock_offset=0.0, database_url=url,
                       rig_args=("--subject", "python", "--subject-param", f"factory={FACTORY}"))
    try:
        sid = rig.api("POST", "/sessions", json={
            "operator": "rig-test", "subject_id": "twin-2", "rig": "virtual-rig", "units": UNITS,
            "target_units": UNITS[:1], "on_ms": 100, "off_ms": 100, "compute_check": "off", "probe": PROBE})["id"]
        rig.api("POST", f"/sessions/{sid}/start")
        assert wait_until(lambda: rig.api("GET", f"/sessions/{sid}")["status"] in ("completed", "failed"), 300, 0.5)
        assert rig.api("GET", f"/sessions/{sid}")["status"] == "completed", rig.logs()
        pres = rig.api("GET", f"/sessions/{sid}/presentations")
    finally:
        rig.stop()
    truth = rig.truth_rows()
    valid = [p for p in pres["presentations"] if p["valid"]]
    assert len(valid) >= 0.8 * 3 * 4
    for p in valid:  # the counts the rig's neuron (the user's own) produced for the image on screen
        assert p["counts"] == truth[str(p["id"])]["counts"], (p, truth[str(p["id"])])
    assert sum(p["counts"][0] for p in valid) > 0
    engine = sa.create_engine(url)
    (identity,) = _recordings(engine, sid)
    assert identity["adapter"] == "lsl"
    assert identity["spikes.subject"] == "python" and identity["spikes.subject.factory"] == FACTORY
    assert identity["spikes.subject.image_size"] == "16"  # (LSL stream descriptions are text)
    _no_objects(identity)


@pytest.mark.parametrize("command", [["bridge", "--adapter", "sim"], ["virtual-rig", "--lsl", "spikes-x"]])
def test_a_bad_factory_is_refused_in_one_line(command):
    import subprocess
    import sys

    from server_process import ROOT, clean_env

    proc = subprocess.run([sys.executable, "-m", "server.cli", *command, "--server", "tcp://127.0.0.1:9",
                           "--subject", "python", "--subject-param", "factory=examples.no_such_neuron:make"],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "Traceback" not in out and len(out.splitlines()) == 1, out
    assert out.startswith("error: subject.factory: cannot import 'examples.no_such_neuron'")
