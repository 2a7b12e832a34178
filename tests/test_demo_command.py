"""The README's main job: ``snslab demo`` sets up everything itself and runs a closed-loop session end to end
(embedded PostgreSQL in its data folder, server, simulated bridge, PsychoPy display on its own Xvfb)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.engine.far_reach import N_AFFINE_SEEDS, TRANSFORMS

from display_fixtures import requires_display_stack

REPO = Path(__file__).resolve().parents[1]
pytestmark = [requires_display_stack, pytest.mark.slow]


def test_demo_runs_maximize_then_invariance_and_stores_every_presentation(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "DATABASE_URL", "SNSLAB_DATABASE_URL")}
    env.update(SNSLAB_DATA_DIR=str(tmp_path / "data"), HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "demo", "--exit-when-done", "--generations", "2",
         "--maximize-generations", "2", "--population", "8", "--check-repeats", "0"],  # 2 generations stay at
        # baseline: the reference check would stop the demo (test_live_reference_check)
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "dashboard http://127.0.0.1:" in out
    # 2 maximize generations of 8 candidates, then 2 invariance generations of 8 candidates + 2 x 5 far-reach
    # candidates + 4 references, and the far-reach seeds (4 transforms, the affine copies and windows) 3 times
    invariance = 2 * (8 + 2 * 5 + 4) + 3 * (len(TRANSFORMS) + N_AFFINE_SEEDS)
    stored = re.search(r"stored: (\d+) presentations", out)
    assert stored and invariance <= int(stored.group(1)) <= invariance + 10, out[-2000:]  # + re-tests
    m = re.search(r"keeping (\d+)% of the response at ([0-9.]+) of the largest possible pixel distance", out)
    assert m and 0.0 < float(m.group(2)) <= 1.0
    assert (tmp_path / "data" / "pgdata").is_dir()  # the embedded database lives in the data folder
    # the rig processes authenticated with CURVE keys bound to their roles
    listing = (tmp_path / "data" / "demo-keys" / "clients.txt").read_text().split("\n")
    roles = {tuple(line.split()[:2]) for line in listing if line and not line.startswith("#")}
    assert roles == {("display", "demo-display"), ("bridge", "demo-bridge"), ("monitor", "demo-virtual-rig")}
    assert "wire: ZeroMQ CURVE" in out
