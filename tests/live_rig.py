"""A live rig of processes started through the shipped commands, for tests: ``snslab server`` on a given
database, ``snslab bridge BRIDGE_ARGS`` and the scripted display (tests/scripted_display.py); the server can
be killed (SIGKILL) and started again on the same ports; ``snslab session ...`` runs against it.

    rig = Rig(database_url, tmp_path, token, ["--adapter", "sim", ...]).start()
    made = rig.create(spec_dict, "name")       # snslab session create FILE --start --json
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import sqlalchemy as sa

from server_process import ROOT, clean_env, free_port


class Rig:
    """Server, simulated bridge and scripted display as processes; the server can be killed and restarted."""

    def __init__(self, db_url: str, tmp, token: str, bridge_args: list[str]):
        self.tmp, self.http, self.wire = tmp, free_port(), f"tcp://127.0.0.1:{free_port()}"
        self.url = f"http://127.0.0.1:{self.http}"
        self.bridge_args = bridge_args
        self.env = clean_env(DATABASE_URL=db_url, SNSLAB_DATA_DIR=str(tmp / "data"), SNSLAB_OPERATOR_TOKEN=token,
                             PYTHONUNBUFFERED="1")
        self.procs: dict[str, subprocess.Popen] = {}
        self.n = 0

    def _start(self, name: str, args: list[str]) -> None:
        self.n += 1
        log = open(self.tmp / f"{name}{self.n}.log", "wb")
        self.procs[name] = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_server(self) -> None:
        self._start("server", [sys.executable, "-m", "server.cli", "server", "--port", str(self.http), "--wire",
                               self.wire, "--stall-s", "3"])
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("snslab server did not start: " + self.logs())

    def start(self) -> "Rig":
        self.start_server()
        self._start("bridge", [sys.executable, "-m", "server.cli", "bridge", "--server", self.wire, "--client-id",
                               "bridge-1", *self.bridge_args])
        self._start("display", [sys.executable, str(ROOT / "tests" / "scripted_display.py"), self.wire, "display-1"])
        return self

    def kill_server(self) -> None:
        p = self.procs["server"]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)

    def session(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "server.cli", "session", *args, "--server", self.url],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)

    def create(self, spec: dict, name: str) -> subprocess.CompletedProcess:
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(spec))
        return self.session("create", str(path), "--start", "--json")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(15)


def session_status(engine, sid) -> str:
    """The stored session's status ("running", "completed", "failed", ...)."""
    with engine.connect() as c:
        return c.execute(sa.text("SELECT status FROM sessions WHERE id = :s"), {"s": sid}).scalar_one()
