"""``serve()`` as the CLI will run it: its own process opens the database, starts the session service and
uvicorn, prints the operator token it made, answers over HTTP and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from api_fixtures import CREATE, url_text
from api_fixtures import api_db_url  # noqa: F401  (fixture)

pytest_plugins = ["db_fixtures"]

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"} | (
                                     {"Authorization": f"Bearer {token}"} if token else {}))
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_serve_prints_its_token_answers_and_stops_on_ctrl_c(api_db_url, tmp_path):
    port = _free_port()
    code = (
        "from server.api.main import serve; from server.settings import Settings; "
        f"serve('127.0.0.1', {port}, Settings(database_url={url_text(api_db_url)!r}, data_dir={str(tmp_path)!r}), "
        "wire_bind='tcp://127.0.0.1:*', log_level='warning')"
    )
    env = {k: v for k, v in os.environ.items() if k != "SNSLAB_OPERATOR_TOKEN"}
    env.pop("http_proxy", None), env.pop("HTTP_PROXY", None)
    proc = subprocess.Popen([sys.executable, "-u", "-c", code], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    output: list[str] = []
    try:
        token = None
        deadline = time.monotonic() + 90
        while token is None:
            assert proc.poll() is None, "serve() exited: " + "".join(output)
            assert time.monotonic() < deadline, "no token printed: " + "".join(output)
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            output.append(line)
            if line.startswith("operator token"):
                token = line.rsplit(": ", 1)[1].strip()
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                status, health = _request(f"{base}/api/health")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "".join(output)
                time.sleep(0.2)
        assert status == 200 and health["service"] is True and health["wire"].startswith("tcp://127.0.0.1:")
        assert any(f"dashboard http://127.0.0.1:{port}/" in ln for ln in output)
        assert _request(f"{base}/api/sessions", CREATE)[0] == 401
        status, created = _request(f"{base}/api/sessions", CREATE, token)
        assert status == 201 and created["status"] == "paused"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
