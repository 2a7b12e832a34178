"""Idle CPU of the rig processes: ``snslab display`` (Xvfb, software frame clock) and ``snslab bridge``
(LSL, fed by ``snslab virtual-rig``) connected to an idle server endpoint, nothing to show or count.

Measured from the processes' own CPU times (psutil, user + system, children included) over a window, so
the number is a share of one core, whatever else the machine is doing::

    python -m bench.rig_idle --seconds 20

Goal (issue 10): display and bridge each under 5% of a core when idle.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    total = t.user + t.system
    for c in p.children(recursive=True):
        try:
            ct = c.cpu_times()
            total += ct.user + ct.system
        except psutil.NoSuchProcess:
            pass
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window once everything is up")
    ap.add_argument("--settle", type=float, default=3.0, help="wait this long after they connected")
    args = ap.parse_args(argv)

    from wire import ServerEndpoint
    from wire.lsl_config import write_loopback_config

    tmp = Path(tempfile.mkdtemp(prefix="rig-idle-"))
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    number = os.fdopen(r).readline().strip()
    env = dict(os.environ, DISPLAY=f":{number}", HOME=str(tmp), PSYCHOPYNOPACKAGES="1",
               LSLAPICFG=str(write_loopback_config(tmp)))
    server = ServerEndpoint("tcp://127.0.0.1:*", session="idle").start()
    wire = f"tcp://127.0.0.1:{server.port}"
    tag = f"idle-{os.getpid()}"

    def spawn(name: str, *a: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "server.cli", *a], cwd=REPO, env=env,
                                stdout=open(tmp / f"{name}.log", "wb"), stderr=subprocess.STDOUT)

    procs = {
        "virtual-rig": spawn("virtual-rig", "virtual-rig", "--server", wire, "--display-id", f"display-{tag}",
                             "--lsl", f"spikes-{tag}", "--subject-param", "image_size=16"),
        "display": spawn("display", "display", "--server", wire, "--windowed", "--size", "320x240",
                         "--client-id", f"display-{tag}", "--refresh-hz", "60"),
        "bridge": spawn("bridge", "bridge", "--server", wire, "--adapter", "lsl", "--param",
                        f"spike_stream=spikes-{tag}", "--param", f"marker_source_id=display-{tag}"),
    }
    try:
        deadline = time.monotonic() + 180  # PsychoPy starts slowly on a busy machine: wait for the connections
        while time.monotonic() < deadline and not all(
                "connected to server" in (tmp / f"{k}.log").read_text(errors="replace") for k in ("display", "bridge")):
            time.sleep(0.5)
        time.sleep(args.settle)
        ps = {k: psutil.Process(p.pid) for k, p in procs.items()}
        c0 = {k: cpu_seconds(p) for k, p in ps.items()}
        t0 = time.monotonic()
        time.sleep(args.seconds)
        dt = time.monotonic() - t0
        print(f"idle CPU over {dt:.1f} s (share of one core; goal < 5% for display and bridge):")
        for k, p in ps.items():
            share = (cpu_seconds(p) - c0[k]) / dt
            print(f"  {k:<12} {share:6.1%}")
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        server.close()
        xvfb.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
