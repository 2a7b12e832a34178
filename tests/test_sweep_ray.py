"""`snslab sweep` on a local Ray instance, as a user runs it: 32 small probes (24 that run ~1 s each, 8 whose
subject is misconfigured), the driver killed with SIGKILL midway, the same command again finishing only the
rest; the stored sessions equal single `snslab insilico` runs with the same seeds; failing probes recorded
with their error while the sweep goes on; `snslab sweep-report` draws the figures; no Ray process is left.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from api_fixtures import url_text
from sweep_files import single_probe, sweep_base
from waiting import wait_for

pytest_plugins = ["db_fixtures"]
pytest.importorskip("ray")
pytest.importorskip("pyarrow")

ROOT = Path(__file__).resolve().parents[1]

NETWORKS = {"complex": "complex-cell", "pooled": "pooled-unit"}  # units that leave baseline in 4 generations
UNITS = {"u0": (0.0, 6.0), "u60": (60.0, 6.0), "u120": (120.0, 8.0), "bad": (0.0, -1.0)}
PROBES = ("invariance", "adversarial")
SEEDS = (0, 1)


def sweep_file(folder: Path) -> Path:
    base = sweep_base()
    nets = ", ".join(f'{{name = "{n}", label = "{k}"}}' for k, n in NETWORKS.items())
    units = ", ".join(f'{{orientation = {o}, wavelength = {w}, label = "{k}"}}' for k, (o, w) in UNITS.items())
    text = (f'name = "ray-test"\noutput = "{folder / "out"}"\n[resources]\nnum_cpus = 1\n[base]\n{base}\n'
            f"[grid]\nnetworks = [{nets}]\nunits = [{units}]\nprobes = {list(PROBES)!r}\nseeds = {list(SEEDS)!r}\n")
    path = folder / "sweep.toml"
    path.write_text(text.replace("'", '"'))
    return path


def single_probe_file(folder: Path, network: str, unit: str, mode: str, seed: int) -> Path:
    """The same probe written as a plain `snslab insilico` config, from the grid's meaning (not our expansion)."""
    o, w = UNITS[unit]
    text = single_probe(mode, seed, folder / "single",
                        f'[subject]\nname = "{NETWORKS[network]}"\norientation = {o}\nwavelength = {w}')
    path = folder / f"{network}-{unit}-{mode}-{seed}.toml"
    path.write_text(text)
    return path


def ray_processes(mark: str) -> list[int]:
    """Processes that inherited this test's environment marker: the driver's local Ray instance (GCS, raylet,
    workers, whose titles Ray renames), only ever the ones this test started."""
    pids = []
    needle = f"SNSLAB_SWEEP_TEST={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def kill_ray(mark: str) -> None:
    for _ in range(50):
        pids = ray_processes(mark)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def rows(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT p.key, p.status, p.attempt, p.error, p.session_ids, p.finished_at, p.labels, p.summary "
            "FROM sweep_probes p JOIN sweeps s ON s.id = p.sweep_id WHERE s.name = 'ray-test'")).mappings().all()
    return {r["key"]: dict(r) for r in got}


@pytest.mark.slow
def test_sweep_on_local_ray_resumes_after_sigkill_and_matches_single_runs(db_url, db_engine, repo, tmp_path):
    folder = tmp_path
    spec = sweep_file(folder)
    temp_dir = tempfile.mkdtemp(prefix="rt")  # short: Ray's socket paths live under it
    mark = uuid.uuid4().hex
    env = dict(os.environ, DATABASE_URL=url_text(db_url), SNSLAB_DATA_DIR=str(folder / "data"),
               SNSLAB_SWEEP_TEST=mark)
    cmd = [sys.executable, "-m", "server.cli", "sweep", str(spec), "--num-cpus", "2", "--quiet",
           "--ray-temp-dir", temp_dir]
    try:
        # 1. run, and kill the driver with SIGKILL once some probes are done
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        deadline = time.monotonic() + 240
        while True:
            done = [r for r in rows(db_engine).values() if r["status"] == "completed"]
            if len(done) >= 6:
                break
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no probe finished"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = ray_processes(mark)
        kill_ray(mark)  # whatever of the local Ray instance outlived its driver (a task may finish meanwhile)
        print(f"{len(left)} processes of the local Ray instance outlived the driver")
        before = rows(db_engine)
        assert len(before) == 32
        finished = {k: r for k, r in before.items() if r["status"] in ("completed", "failed")}
        completed_before = [k for k, r in finished.items() if r["status"] == "completed"]
        assert 6 <= len(completed_before) < 24, "the kill must come midway"
        assert all(r["attempt"] == 1 for r in before.values())

        # 2. the same command again: only the rest runs
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        m = re.search(r"sweep ray-test: 32 probes, (\d+) already finished, (\d+) to run", out.stdout)
        assert m and int(m.group(1)) == len(finished) and int(m.group(2)) == 32 - len(finished), out.stdout
        after = rows(db_engine)
        for k, r in finished.items():  # untouched: same attempt, same sessions, same finish time
            assert (after[k]["attempt"], after[k]["session_ids"], after[k]["finished_at"]) == \
                   (r["attempt"], r["session_ids"], r["finished_at"])
        for k in set(after) - set(finished):
            assert after[k]["attempt"] == 2 and after[k]["status"] in ("completed", "failed")
        completed = [r for r in after.values() if r["status"] == "completed"]
        failed = [r for r in after.values() if r["status"] == "failed"]
        assert len(completed) == 24 and len(failed) == 8
        assert all(r["labels"]["unit"] == "bad" for r in failed)
        assert all(r["error"].startswith("ConfigError: subject.wavelength: bad value -1.0") for r in failed)
        assert "in all completed 24, failed 8" in out.stdout
        for r in completed:
            assert len(r["session_ids"]) == 2  # the maximize phase that found the reference, and the probe
            assert 0.0 < r["summary"]["stretch"] <= 1.0 and r["summary"]["generations"] == 5
            for sid in r["session_ids"]:
                assert repo.session_summary(sid).status == "completed"

        # Parquet: one row per probe
        import pyarrow.parquet as pq

        table = pq.read_table(folder / "out" / "probes.parquet").to_pylist()
        assert len(table) == 32
        by_key = {t["key"]: t for t in table}
        for r in completed:
            t = next(t for t in table if t["session_ids"] == [str(s) for s in r["session_ids"]])
            assert t["stretch"] == pytest.approx(r["summary"]["stretch"]) and t["status"] == "completed"
        assert sum(t["status"] == "failed" for t in by_key.values()) == 8

        # 3. the stored sessions equal single `snslab insilico` runs with the same seeds
        for network, unit, mode, seed in (("complex", "u60", "invariance", 1), ("pooled", "u0", "adversarial", 0)):
            r = next(r for r in completed if r["labels"]["network"] == network and r["labels"]["unit"] == unit
                     and r["labels"]["probe"] == mode and r["labels"]["seed"] == seed)
            single = subprocess.run([sys.executable, "-m", "server.cli", "insilico",
                                     str(single_probe_file(folder, network, unit, mode, seed)), "--quiet"],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert single.returncode == 0, single.stderr
            ids = dict(p.split("=") for p in re.search(r"stored sessions: (.*)", single.stdout).group(1).split(", "))
            assert list(ids) == ["maximize", mode]
            for sweep_sid, (phase, single_sid) in zip(r["session_ids"], ids.items()):
                a, b = repo.load_history(sweep_sid), repo.load_history(uuid.UUID(single_sid))
                assert len(a) == len(b) > 0, phase
                for col in ("generation", "order_in_batch", "kind", "codes", "counts"):
                    x, y = getattr(a, col), getattr(b, col)
                    assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (phase, col)

        # 4. the report
        rep = subprocess.run([sys.executable, "-m", "server.cli", "sweep-report", "ray-test", "-o",
                              str(folder / "report")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert rep.returncode == 0, rep.stderr
        page = (folder / "report" / "index.html").read_text()
        assert "32 probes: 24 completed, 8 failed" in page
        for png in ("stretch.png", "retention.png"):
            assert (folder / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # 5. nothing of Ray is left running
        assert wait_for(lambda: not ray_processes(mark), 30, 0.5), ray_processes(mark)
    finally:
        kill_ray(mark)
        shutil.rmtree(temp_dir, ignore_errors=True)
