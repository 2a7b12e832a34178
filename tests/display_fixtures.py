"""Fixtures for display tests: a private Xvfb screen, a sandboxed PsychoPy home, loopback-only LSL, and
a runner for the real display client in a subprocess.

Use with ``from display_fixtures import *`` (pytest puts tests/ on sys.path). Nothing here reaches the
network: LSL is pinned to 127.0.0.1, PsychoPy's prefs/caches go to a temporary HOME (its update checks
and usage stats only exist in the PsychoPy app, and are switched off by the client anyway).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from waiting import wait_for as wait_until  # noqa: F401  (the suite's one bounded wait, by its older name)

REPO = Path(__file__).resolve().parents[1]

__all__ = ["xvfb", "display_env", "DisplayProcess", "requires_display_stack"]


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


requires_display_stack = pytest.mark.skipif(
    shutil.which("Xvfb") is None or not _have("psychopy") or not _have("pylsl"),
    reason="needs Xvfb and the display extra (psychopy, pylsl): scripts/setup installs them",
)


@pytest.fixture(scope="module")
def xvfb():
    """Start ``Xvfb -screen 0 1024x768x24`` on a display number it picks itself (``-displayfd``, so parallel
    test runs never collide) and stop it afterwards. Yields the DISPLAY string."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(w), "-screen", "0", "1024x768x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(w)
    try:
        with os.fdopen(r) as f:
            number = f.readline().strip()  # Xvfb writes the number once it accepts connections
        if not number:
            raise RuntimeError(f"Xvfb did not start (exit code {proc.poll()})")
        yield f":{number}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def display_env(xvfb, tmp_path_factory):
    """Environment for a display client subprocess (and set in this process for pylsl inlets)."""
    home = tmp_path_factory.mktemp("psychopy-home")
    from wire.lsl_config import write_loopback_config

    cfg = write_loopback_config(home)
    env = dict(os.environ)
    env.update(
        DISPLAY=xvfb, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), MPLCONFIGDIR=str(home / "mpl"),
        PSYCHOPYNOPACKAGES="1", LSLAPICFG=str(cfg), PYTHONUNBUFFERED="1",
    )  # fmt: skip
    env.pop("WAYLAND_DISPLAY", None)
    old = os.environ.get("LSLAPICFG")
    os.environ["LSLAPICFG"] = str(cfg)  # our own pylsl inlet stays on loopback too
    yield env
    if old is None:
        os.environ.pop("LSLAPICFG", None)
    else:
        os.environ["LSLAPICFG"] = old


class DisplayProcess:
    """``python -m stimulus_client ...`` in a subprocess, its stderr in a file (read it with ``log()``)."""

    def __init__(self, env: dict, args: list[str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stimulus_client", *args], cwd=REPO, env=env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()
