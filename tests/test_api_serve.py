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
from waiting import wait_for
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


def test_sigterm_stops_snslab_server_and_its_embedded_database(tmp_path):
    """`kill`, systemd and `docker stop` send SIGTERM: the server closes its sessions and the embedded
    PostgreSQL it started stops with it (uvicorn re-raises the signal, which used to kill the process before
    anything was closed, leaving the database running)."""
    import psutil

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SNSLAB_DATABASE_URL")}
    env.update(SNSLAB_DATA_DIR=str(tmp_path / "data"), SNSLAB_OPERATOR_TOKEN="t" * 16)
    env.pop("http_proxy", None), env.pop("HTTP_PROXY", None)
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "server", "--port", str(port), "--wire",
                             "tcp://127.0.0.1:*"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    pid_file = tmp_path / "data" / "pgdata" / "postmaster.pid"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _request(f"http://127.0.0.1:{port}/api/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        postmaster = int(pid_file.read_text().split()[0])
        assert psutil.pid_exists(postmaster)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        gone = wait_for(lambda: not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == "zombie", 30)
        assert gone and not pid_file.exists(), (tmp_path / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pid_file.exists():  # never leave a database running behind a failed test
            psutil.Process(int(pid_file.read_text().split()[0])).terminate()
