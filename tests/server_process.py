"""`snslab server` in its own process, the way an operator starts it, for tests and benchmarks.

    with ServerProcess(database_url, data_dir, token="t") as srv:
        srv.url, srv.wire      # http://127.0.0.1:PORT, tcp://127.0.0.1:WIREPORT
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without proxies (loopback only) and without tokens the test did not choose."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
           and not k.startswith("SNSLAB_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env | extra


class ServerProcess:
    """`python -m server.cli server` on free loopback ports; stopped with Ctrl-C (SIGINT) on exit."""

    def __init__(self, database_url: str, data_dir: Path, *, token: str, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.wire_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.wire = f"tcp://127.0.0.1:{self.wire_port}"
        self.token = token
        env = clean_env(DATABASE_URL=database_url, SNSLAB_DATA_DIR=str(data_dir), SNSLAB_OPERATOR_TOKEN=token,
                        **(extra_env or {}))
        self.cmd = [sys.executable, "-u", "-m", "server.cli", "server", "--port", str(self.port), "--wire", self.wire]
        self.env = env
        self.output: list[str] = []
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        threading.Thread(target=lambda: [self.output.append(ln) for ln in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("snslab server exited: " + "".join(self.output))
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("snslab server did not answer: " + "".join(self.output))
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=5) as r:
                    if json.loads(r.read())["status"] == "ok":
                        return self
            except OSError:
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
