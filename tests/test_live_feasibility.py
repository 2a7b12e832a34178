"""Creating a live session checks with a timed dry run that this server can keep up: the `snslab server`
command in its own process refuses (one line, 400) a ResNet50-layer4 stage against a 1 ms display, creates it
with a logged warning when asked to, and creates a light (pixel) session without a word.

The margins are chosen so timing noise cannot flip the outcome: ResNet50 up to layer4 on 20 images is
~80 GFLOP, a second or more on any CPU (>100x the 3.4 ms of display per generation); the pixel stage takes well under a millisecond
per generation against 34 presentations x 200 ms."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from server.engine.far_reach import N_AFFINE_SEEDS, TRANSFORMS

from api_fixtures import url_text
from api_fixtures import api_db_url  # noqa: F401  (fixture)

pytest_plugins = ["db_fixtures"]
pytest.importorskip("torchvision")

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "feasibility-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | bytes | None = None) -> tuple[int, object]:
    raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
    req = urllib.request.Request(url, data=raw, headers={"Content-Type": kind, "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _session(code_path: str, stage: dict, on_ms: float, **extra) -> dict:
    return {
        "operator": "ana", "subject_id": "m01", "rig": "rig-test", "units": ["sim:0"],
        "probe": {"mode": "invariance", "population": 20, "generations": 3, "retests": 10,
                  "generator": {"name": "dct", "code_size": 64, "image_size": 64, "channels": 1},
                  "stages": [stage]},
        "reference": {"source": "code", "path": code_path},
        "on_ms": on_ms, "off_ms": on_ms, **extra,
    }


@pytest.mark.slow
def test_a_session_the_server_cannot_keep_up_with_is_refused_with_a_clear_message(api_db_url, tmp_path):
    code_path = tmp_path / "ref.npy"
    np.save(code_path, np.random.default_rng(0).normal(size=64))
    port, wire = _free_port(), _free_port()
    env = dict(os.environ, DATABASE_URL=url_text(api_db_url), SNSLAB_OPERATOR_TOKEN=TOKEN,
               SNSLAB_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="2")
    env.pop("http_proxy", None), env.pop("HTTP_PROXY", None)
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "server", "--port", str(port),
                             "--wire", f"tcp://127.0.0.1:{wire}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _request(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "server did not answer"
            time.sleep(0.3)

        status, uploaded = _request(f"{base}/references?kind=code", code_path.read_bytes())
        assert status == 201, uploaded
        code_path = uploaded["path"]  # the name the server stored the reference under

        heavy = {"name": "cnn", "architecture": "resnet50", "layer": "layer4", "device": "cpu"}
        status, body = _request(f"{base}/sessions", _session(code_path, heavy, on_ms=0.05))
        assert status == 400, body
        detail = body["detail"]
        assert "\n" not in detail
        assert detail.startswith("probe.stages: this server (cpu) needs ~")
        # 20 candidates + 10 re-tests + 4 references + far reach's 2 x 5 candidates, and its seeds (the reference's
        # 4 transforms, affine copies and windows) shown 3 times each in the first generation
        shown = 20 + 10 + 4 + 2 * 5 + 3 * (len(TRANSFORMS) + N_AFFINE_SEEDS)
        assert f"but the display shows a generation in {shown * 0.0001:.3g} s ({shown} presentations x (on + off))" \
            in detail
        assert "cannot keep up" in detail and "lighter stage than stage 'cnn'" in detail and "GPU" in detail
        assert "compute_check = 'warn'" in detail
        needed = float(detail.split("needs ~")[1].split(" s")[0])
        assert needed > 100 * 0.0034  # the margin the test relies on, as the server measured it
        listed = _request(f"{base}/sessions")[1]
        assert listed == [] or all(s["rig"] != "rig-test" for s in listed)  # nothing was stored

        status, body = _request(f"{base}/sessions", _session(code_path, heavy, on_ms=0.05, compute_check="warn"))
        assert status == 201, body
        events = _request(f"{base}/sessions/{body['id']}/events")[1]
        warned = [e for e in events if e["kind"] == "compute"]
        assert len(warned) == 1 and warned[0]["level"] == "warning"
        assert "cannot keep up" in warned[0]["message"]

        light = _session(code_path, {"name": "pixel"}, on_ms=100)
        status, body = _request(f"{base}/sessions", light)
        assert status == 201, body
        events = _request(f"{base}/sessions/{body['id']}/events")[1]
        assert [e for e in events if e["kind"] == "compute"] == []
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
