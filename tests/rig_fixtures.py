"""The rig path as a lab runs it: every part a separate process started through the shipped ``snslab`` CLI.

    snslab server (embedded PostgreSQL)  <-ZeroMQ->  snslab display (Xvfb)   --LSL markers / TTL pty-->
    snslab virtual-rig (own clock, model neuron) --LSL spikes / Open Ephys frames-->  snslab bridge --> server

Sessions are created and started over the HTTP API; what was stored is read back from the API and the
database; the virtual rig's truth file says what should have been counted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TOKEN = "rig-test-token"
UNITS = ["Electrode 1:1", "Electrode 2:1"]  # names with spaces, as Open Ephys names electrodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", *args], cwd=REPO, env=env,
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)

    def log(self, tail: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def wait_until(pred, seconds: float, step: float = 0.2) -> bool:
    """A guard against hanging, never a timing assertion."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


class RigProcesses:
    """server + display + virtual rig + bridge, for one adapter (``lsl`` or ``openephys``)."""

    def __init__(self, tmp: Path, display_env: dict, adapter: str, *, clock_offset: float = 0.35,
                 rig_args: tuple[str, ...] = (), image_size: int = 16, database_url: str | None = None):
        self.tmp, self.adapter = tmp, adapter
        self.tag = uuid.uuid4().hex[:8]
        self.http = f"http://127.0.0.1:{free_port()}"
        self.wire = f"tcp://127.0.0.1:{free_port()}"
        self.truth = tmp / "truth.jsonl"
        env = dict(display_env)
        env.update(SNSLAB_DATA_DIR=str(tmp / "data"), SNSLAB_OPERATOR_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
        for k in ("DATABASE_URL", "SNSLAB_DATABASE_URL"):
            env.pop(k, None)
        if database_url is not None:  # a test database instead of the embedded one in the data folder
            env["DATABASE_URL"] = database_url
        self.env = env
        self.display_id = f"display-{self.tag}"
        port = self.http.rsplit(":", 1)[1]
        self.procs: list[Proc] = []
        self.server = self._start("server", ["server", "--port", port, "--wire", self.wire])
        display = ["display", "--server", self.wire, "--windowed", "--size", "320x240", "--client-id",
                   self.display_id, "--refresh-hz", "60", "--heartbeat", "0.5"]
        rig = ["virtual-rig", "--server", self.wire, "--client-id", f"rig-{self.tag}", "--display-id",
               self.display_id, "--clock-offset", str(clock_offset), "--edge-spikes", "--truth", str(self.truth),
               "--subject-param", f"image_size={image_size}", "--seed", "3", *rig_args]
        bridge = ["bridge", "--server", self.wire, "--client-id", f"bridge-{self.tag}", "--adapter", adapter]
        if adapter == "lsl":
            rig += ["--lsl", f"spikes-{self.tag}"]
            bridge += ["--param", f"spike_stream=spikes-{self.tag}", "--param", f"marker_source_id={self.display_id}",
                       "--param", "photodiode=true"]
        else:
            oe = f"tcp://127.0.0.1:{free_port()}"
            link = tmp / "ttl-port"
            rig += ["--openephys", oe, "--ttl-link", str(link)]
            display += ["--ttl", f"serial:{link}"]
            bridge += ["--param", f"endpoint={oe}"]
        self.commands = {"display": display, "virtual-rig": rig, "bridge": bridge}
        assert wait_until(self.healthy, 120), self.server.log()
        self.rig = self._start("virtual-rig", rig)
        if adapter == "openephys":
            assert wait_until(lambda: (tmp / "ttl-port").exists(), 60), self.rig.log()
        self.display = self._start("display", display)
        self.bridge = self._start("bridge", bridge)
        ready = {self.display: "connected to server", self.bridge: "connected to server",
                 self.rig: "following markers of"}  # what an operator waits to see before starting
        assert wait_until(lambda: all(text in p.log(100_000) for p, text in ready.items()), 180), self.logs()

    def _start(self, name: str, args: list[str]) -> Proc:
        p = Proc(name, args, self.tmp, self.env)
        self.procs.append(p)
        return p

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.http}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, method: str, path: str, **kw):
        r = httpx.request(method, f"{self.http}/api{path}", headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=30, **kw)
        assert r.status_code < 400, r.text
        return r.json()

    def run_session(self, generations: int, population: int = 4, seed: int = 5, timeout: float = 300) -> str:
        body = {
            "operator": "rig-test", "subject_id": "virtual", "rig": "virtual-rig", "units": UNITS,
            "target_units": UNITS[:1], "on_ms": 100, "off_ms": 100,
            "probe": {"mode": "maximize", "seed": seed, "population": population, "generations": generations,
                      "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
                      "reference": {"check_repeats": 0}},  # (the reference check: test_live_reference_check)
        }
        sid = self.api("POST", "/sessions", json=body)["id"]
        self.api("POST", f"/sessions/{sid}/start")
        done = wait_until(lambda: self.api("GET", f"/sessions/{sid}")["status"] in ("completed", "failed"),
                          timeout, 0.5)
        assert done, self.logs()
        return sid

    def events(self, sid: str) -> list[dict]:
        return self.api("GET", f"/sessions/{sid}/events")

    def baseline_counts(self, sid: str) -> dict[int, list[int]]:
        """Baseline counts per presentation, read from the server's (embedded) database."""
        import sqlalchemy as sa

        from server.db import connect
        from server.settings import Settings

        db = connect(Settings(data_dir=self.tmp / "data", database_url=None), migrate_schema=False)
        try:
            with db.engine.connect() as c:
                rows = c.execute(sa.text(
                    "SELECT p.id, r.baseline_counts FROM presentations p JOIN responses r ON r.presentation_id = p.id"
                    " WHERE p.session_id = :s"), {"s": sid}).all()
        finally:
            db.engine.dispose()
        return {int(r[0]): list(r[1]) for r in rows}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (alive {p.alive()})\n{p.log(2500)}" for p in self.procs)

    def truth_rows(self) -> dict[str, dict]:
        rows = {}
        for line in self.truth.read_text().splitlines():
            r = json.loads(line)
            rows[r["presentation_id"]] = r
        return rows

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
