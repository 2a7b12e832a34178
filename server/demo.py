"""``snslab demo``: the whole closed loop on one machine, with a simulated neuron in place of the animal.

Starts the database (embedded PostgreSQL unless DATABASE_URL is set), the server (HTTP API + dashboard +
ZeroMQ endpoint), the recording bridge with a simulated complex cell, and the PsychoPy display client (on
a private Xvfb screen when there is no display). Then it runs what an operator would: a maximize session
to find the neuron's most exciting image, and an invariance probe with that image as the reference.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


IMAGE_SIZE = 32


def probe_config(mode: str, generations: int, population: int, seed: int) -> dict:
    return {
        "mode": mode, "seed": seed, "population": population, "generations": generations, "reference_repeats": 4,
        "generator": {"name": "dct", "code_size": 256, "image_size": IMAGE_SIZE, "channels": 1},
        "stages": ["pixel"], "noise": {"kind": "poisson", "window_ms": 150},
        "subject": {"name": "complex-cell", "image_size": IMAGE_SIZE},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_xvfb() -> tuple[subprocess.Popen | None, str]:
    """A private virtual screen when there is no display (headless machines, CI)."""
    if os.environ.get("DISPLAY"):
        return None, os.environ["DISPLAY"]
    if shutil.which("Xvfb") is None:
        raise RuntimeError("no DISPLAY and no Xvfb: run scripts/setup (apt-get install xvfb libgl1-mesa-dri)")
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    if not number:
        raise RuntimeError("Xvfb did not start")
    return proc, f":{number}"


@dataclass
class Rig:
    """The display client and the recording bridge as child processes of the demo."""

    wire: str
    display_env: dict
    log_dir: Path
    bridge_args: tuple[str, ...] = ()
    display: subprocess.Popen | None = None
    bridge: subprocess.Popen | None = None

    def start_display(self) -> subprocess.Popen:
        self.display = subprocess.Popen(
            [sys.executable, "-m", "stimulus_client", "--server", self.wire, "--windowed", "--size", "640x480",
             "--client-id", "demo-display", "--fixation", "--photodiode-patch", "bottom-right:40"],
            env=self.display_env, stdout=open(self.log_dir / "display.log", "ab"), stderr=subprocess.STDOUT,
        )
        return self.display

    def start_bridge(self) -> subprocess.Popen:
        self.bridge = subprocess.Popen(
            [sys.executable, "-m", "recording_bridge", "--server", self.wire, "--client-id", "demo-bridge",
             "--adapter", "sim", "--subject-param", f"image_size={IMAGE_SIZE}", *self.bridge_args],
            stdout=open(self.log_dir / "bridge.log", "ab"), stderr=subprocess.STDOUT,
        )
        return self.bridge

    def stop(self) -> None:
        for p in (self.display, self.bridge):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (self.display, self.bridge):
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


def display_environment(display: str, home: Path) -> dict:
    env = dict(os.environ, DISPLAY=display)
    env.setdefault("PSYCHOPY_USERDIR", str(home / "psychopy"))
    return env


def run_demo(*, max_generations: int = 12, generations: int = 12, population: int = 16, seed: int = 1,
             port: int | None = None, exit_when_done: bool = False, out=print) -> dict:
    import uvicorn

    from server.api.main import create_app
    from server.db import connect
    from server.service import SessionCreate, SessionService
    from server.settings import Settings

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = settings.data_dir / "demo-logs"
    log_dir.mkdir(exist_ok=True)
    out("starting the database ...")
    database = connect(settings)
    service = SessionService(database, bind=f"tcp://127.0.0.1:{free_port()}")
    token = settings.operator_token or "demo"
    app = create_app(settings, service, database=database, operator_token=token)
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    http = threading.Thread(target=server.run, daemon=True)
    http.start()
    xvfb, display = start_xvfb()
    rig = Rig(service.wire_address, display_environment(display, settings.data_dir), log_dir)
    url = f"http://127.0.0.1:{port}/"
    summary: dict = {}
    try:
        rig.start_bridge()
        rig.start_display()
        out(f"dashboard {url}  (API docs {url}docs, operator token '{token}')")
        out(f"database {database.masked_url}; wire {service.wire_address}; display on {display}; logs {log_dir}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len([c for c in service.clients() if c["alive"]]) < 2:
            time.sleep(0.2)
        if len([c for c in service.clients() if c["alive"]]) < 2:
            raise RuntimeError(f"display or bridge did not connect (see {log_dir})")
        common = dict(operator="demo", subject_id="model-complex-cell", rig="demo-rig", units=["sim:0"])

        sid_max = service.create(SessionCreate(probe=probe_config("maximize", max_generations, population, seed), **common))
        out(f"maximize session {sid_max}: finding the neuron's most exciting image ({max_generations} generations)")
        _run(service, sid_max, out)
        sid_inv = service.create(SessionCreate(
            probe=probe_config("invariance", generations, population, seed),
            reference={"source": "maximize-session", "session_id": str(sid_max)}, **common,
        ))
        out(f"invariance session {sid_inv}: stretching pixels while keeping the response ({generations} generations)")
        _run(service, sid_inv, out)
        summary = _summarise(service, sid_max, sid_inv)
        out(f"most exciting image: {summary['mei_rate_hz']:.1f} Hz (model rate); invariance probe selected an image "
            f"keeping {summary['retention']:.0%} of the response at {summary['stretch']:.2f} of the largest "
            f"possible pixel distance (best affine control keeping >= 90%: {summary['best_affine_stretch_at_90']:.2f})")
        out(f"stored: {summary['presentations']} presentations; dashboard {url}?session={sid_inv}")
        if not exit_when_done:
            out("serving the dashboard; Ctrl-C to stop")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        rig.stop()
        server.should_exit = True
        http.join(timeout=5)
        service.close()
        database.close()
        if xvfb is not None:
            xvfb.terminate()
    return summary


def _run(service, sid, out) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    service.start(sid)
    loop = service.loop
    total = loop.runner.search.max_generations
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task(f"{loop.runner.search.probe.mode:<10}", total=total)
        while not loop.finished.wait(0.5):
            bar.update(task, completed=len(loop.runner.reports))
        bar.update(task, completed=len(loop.runner.reports))


def _summarise(service, sid_max, sid_inv) -> dict:
    from server.engine.evaluation import affine_control_table, retention_and_stretch
    from server.engine.subjects import make_subject

    runner = service.loop.runner
    search = runner.search
    subject = make_subject("complex-cell", image_size=IMAGE_SIZE)
    selected = search.generator.render(search.result().code[None])
    ref = runner.reference_image
    retention, stretch = retention_and_stretch(subject, ref, selected)
    kept = [c["stretch"] for c in affine_control_table(subject, ref) if c["retention"] >= 0.9]
    h = service.repo.load_history(sid_inv)
    return {
        "maximize_session": str(sid_max), "invariance_session": str(sid_inv),
        "mei_rate_hz": float(subject.rate(ref[None])[0, 0]), "retention": float(retention[0]),
        "stretch": float(stretch[0]), "best_affine_stretch_at_90": max(kept, default=0.0),
        "presentations": int(len(h)), "generations": len(runner.reports),
    }
