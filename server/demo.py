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
    # real-time priority when allowed: a starved X server delays every flip of the display
    rt = ["chrt", "-r", "10"] if shutil.which("chrt") and hasattr(os, "geteuid") and os.geteuid() == 0 else []
    proc = subprocess.Popen([*rt, "Xvfb", "-displayfd", str(w), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    if not number:
        raise RuntimeError("Xvfb did not start")
    return proc, f":{number}"


RIGS = ("lsl", "openephys", "sim")
VIRTUAL_UNITS = ["Electrode 1:1", "Electrode 2:1"]  # what snslab virtual-rig records (the first sees the cell)


@dataclass
class Rig:
    """The display client, the recording bridge and (``kind`` lsl/openephys) the virtual acquisition system
    as child processes of the demo, started with the same commands a lab would type."""

    wire: str
    display_env: dict
    log_dir: Path
    bridge_args: tuple[str, ...] = ()
    kind: str = "lsl"
    keys: Path | None = None  # the CURVE key folder every rig process authenticates with
    display: subprocess.Popen | None = None
    bridge: subprocess.Popen | None = None
    virtual: subprocess.Popen | None = None

    def __post_init__(self):
        if self.kind not in RIGS:
            raise RuntimeError(f"--rig {self.kind!r}: allowed {', '.join(RIGS)}")
        self.ttl_link = self.log_dir / "virtual-ttl"
        self.oe_endpoint = f"tcp://127.0.0.1:{free_port()}"

    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        if self.keys is not None:
            args = [*args, "--keys", str(self.keys)]
        return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=open(self.log_dir / f"{name}.log", "ab"),
                                stderr=subprocess.STDOUT)

    def start_virtual_rig(self) -> subprocess.Popen | None:
        if self.kind == "sim":
            return None
        args = ["recording_bridge.virtual_rig", "--server", self.wire, "--client-id", "demo-virtual-rig",
                "--display-id", "demo-display", "--subject-param", f"image_size={IMAGE_SIZE}"]
        args += ["--lsl", "snslab-spikes"] if self.kind == "lsl" else \
            ["--openephys", self.oe_endpoint, "--ttl-link", str(self.ttl_link)]
        self.virtual = self._spawn("virtual-rig", args, self.display_env)
        deadline = time.monotonic() + 60
        while self.kind == "openephys" and not self.ttl_link.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.virtual

    def start_display(self) -> subprocess.Popen:
        args = ["stimulus_client", "--server", self.wire, "--windowed", "--size", "640x480", "--client-id",
                "demo-display", "--fixation", "--photodiode-patch", "bottom-right:40", "--refresh-hz", "60"]
        if self.kind == "openephys":
            args += ["--ttl", f"serial:{self.ttl_link}"]
        self.display = self._spawn("display", args, self.display_env)
        return self.display

    def start_bridge(self) -> subprocess.Popen:
        args = ["recording_bridge", "--server", self.wire, "--client-id", "demo-bridge", "--adapter", self.kind]
        if self.kind == "sim":
            args += ["--subject-param", f"image_size={IMAGE_SIZE}"]
        elif self.kind == "lsl":
            args += ["--param", "marker_source_id=demo-display", "--param", "photodiode=true"]
        else:
            args += ["--param", f"endpoint={self.oe_endpoint}"]
        self.bridge = self._spawn("bridge", [*args, *self.bridge_args], self.display_env)
        return self.bridge

    @property
    def clients(self) -> int:
        return 2 if self.kind == "sim" else 3

    @property
    def units(self) -> list[str]:
        return ["sim:0"] if self.kind == "sim" else list(VIRTUAL_UNITS)

    def stop(self) -> None:
        procs = (self.display, self.bridge, self.virtual)
        for p in procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


def display_environment(display: str, home: Path) -> dict:
    env = dict(os.environ, DISPLAY=display)
    env.setdefault("PSYCHOPY_USERDIR", str(home / "psychopy"))
    return env


DEMO_CLIENTS = (("display", "demo-display"), ("bridge", "demo-bridge"), ("monitor", "demo-virtual-rig"))


def demo_keys(folder: Path) -> Path:
    """The demo's CURVE key folder (made once, as `snslab keys init` + `snslab keys add` would): the server
    accepts only the demo's display, bridge and virtual rig, each bound to its role and client id."""
    from wire.auth import LISTING, add_client, init_keys, read_listing

    if not (folder / "server.key_secret").exists():
        init_keys(folder, displays=(), bridges=())
    listed = {cid for _, cid in read_listing(folder / LISTING).values()}
    for role, cid in DEMO_CLIENTS:
        if cid not in listed:
            add_client(folder, role, cid)
    return folder


def run_demo(*, max_generations: int = 12, generations: int = 12, population: int = 16, seed: int = 1,
             port: int | None = None, exit_when_done: bool = False, rig_kind: str = "lsl", out=print,
             check_repeats: int = 20) -> dict:
    import uvicorn

    from server.api.main import create_app
    from server.db import connect
    from server.service import SessionCreate, SessionService
    from server.settings import Settings
    from wire.auth import ServerKeys

    if threading.current_thread() is threading.main_thread():
        # `kill` stops the demo as Ctrl-C does: the display, bridge and virtual rig it started go with it
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = settings.data_dir / "demo-logs"
    log_dir.mkdir(exist_ok=True)
    out("starting the database ...")
    database = connect(settings)
    keys = demo_keys(settings.data_dir / "demo-keys")
    service = SessionService(database, bind=f"tcp://127.0.0.1:{free_port()}",
                             endpoint_options={"keys": ServerKeys.load(keys)})
    token = settings.operator_token or "demo"
    app = create_app(settings, service, database=database, operator_token=token)
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    http = threading.Thread(target=server.run, daemon=True)
    http.start()
    xvfb, display = start_xvfb()
    rig = Rig(service.wire_address, display_environment(display, settings.data_dir), log_dir, kind=rig_kind, keys=keys)
    url = f"http://127.0.0.1:{port}/"
    summary: dict = {}
    try:
        rig.start_virtual_rig()
        rig.start_bridge()
        rig.start_display()
        out(f"dashboard {url}  (API docs {url}docs, operator token '{token}')")
        out(f"database {database.masked_url}; wire {service.wire_address}; display on {display}; logs {log_dir}")
        out(f"wire: ZeroMQ CURVE with the keys in {keys} (only {', '.join(c for _, c in DEMO_CLIENTS)} are let in)")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len([c for c in service.clients() if c["alive"]]) < rig.clients:
            time.sleep(0.2)
        if len([c for c in service.clients() if c["alive"]]) < rig.clients:
            raise RuntimeError(f"display, bridge or virtual rig did not connect (see {log_dir})")
        if rig.kind != "sim":  # the virtual rig must see the screen before the first onset
            rig_log = log_dir / "virtual-rig.log"
            while time.monotonic() < deadline and "following markers" not in rig_log.read_text(errors="replace"):
                time.sleep(0.2)
        out(f"rig: {rig.kind} ({'simulated neuron in the bridge' if rig.kind == 'sim' else 'snslab virtual-rig'})")
        common = dict(operator="demo", subject_id="model-complex-cell", rig=f"demo-{rig.kind}", units=rig.units,
                      target_units=rig.units[:1])

        maximize = probe_config("maximize", max_generations, population, seed) | {
            "reference": {"check_repeats": check_repeats}}  # its best image re-measured (server.reference_phase)
        sid_max = service.create(SessionCreate(probe=maximize, **common))
        out(f"maximize session {sid_max}: finding the neuron's most exciting image ({max_generations} generations)")
        _run(service, sid_max, out)
        _report_invalid(service, sid_max, out)
        for event in service.repo.events(sid_max, kind="reference_check")[-1:]:  # server.reference_phase
            out(event["message"])
        sid_inv = service.create(SessionCreate(
            probe=probe_config("invariance", generations, population, seed),
            reference={"source": "maximize-session", "session_id": str(sid_max)}, **common,
        ))
        out(f"invariance session {sid_inv}: stretching pixels while keeping the response ({generations} generations)")
        _run(service, sid_inv, out)
        _report_invalid(service, sid_inv, out)
        summary = _summarise(service, sid_max, sid_inv)
        out(f"most exciting image: {summary['mei_rate_hz']:.1f} Hz (model rate); invariance probe selected an image "
            f"keeping {summary['retention']:.0%} of the response at {summary['stretch']:.2f} of the largest "
            f"possible pixel distance (best affine control within +-10%: {summary['best_affine_stretch_at_90']:.2f})")
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


def _report_invalid(service, sid, out) -> float:
    """Print the share of presentations stored invalid, and why (first reason of each)."""
    from collections import Counter

    h = service.repo.load_history(sid)
    valid = [v for v in h.valid if v is not None]
    bad = [i for i, v in enumerate(h.valid) if v is not None and not bool(v)]
    why = Counter((h.qc_reasons[i][0] if h.qc_reasons[i] else "no reason").split(":")[0] for i in bad)
    share = len(bad) / max(1, len(valid))
    detail = "; ".join(f"{n} x {r}" for r, n in why.most_common(5))
    out(f"invalid presentations: {len(bad)} of {len(valid)} ({share:.1%})" + (f": {detail}" if detail else ""))
    return share


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
    kept = [c["stretch"] for c in affine_control_table(subject, ref) if abs(c["retention"] - 1.0) <= 0.1]  # two-sided
    h = service.repo.load_history(sid_inv)
    return {
        "maximize_session": str(sid_max), "invariance_session": str(sid_inv),
        "mei_rate_hz": float(subject.rate(ref[None])[0, 0]), "retention": float(retention[0]),
        "stretch": float(stretch[0]), "best_affine_stretch_at_90": max(kept, default=0.0),
        "presentations": int(len(h)), "generations": len(runner.reports),
    }
