"""Probes batched together (`[resources] batch_probes`): their torch model calls meet in shared forward passes,
yet every probe's results are bit for bit those of the probe run alone on the CPU (fp32), numpy model units
and CNN units (ResNet18 with seeded random weights) alike; a failing probe fails alone; and `snslab sweep`
with batch_probes, killed midway and run again, finishes only the rest with sessions equal to single
`snslab insilico` runs.
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
torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from server.config import parse_config  # noqa: E402
from server.engine.torchpaths import pack_passes  # noqa: E402
from server.insilico import run_probe  # noqa: E402
from server.sweep.group import group_key, group_probes, run_together  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NETWORK = {"architecture": "resnet18", "layer": "layer2", "input_size": 32, "seed": 1}


def probe_config(subject: dict, seed: int, mode: str, stages: list) -> dict:
    return {"mode": mode, "seed": seed, "population": 12, "generations": 5, "retests": 2, "stages": stages,
            "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
            "reference": {"source": "maximize", "generations": 4}, "subject": subject, "output": "unused"}


def cnn_unit(unit) -> dict:
    return {"name": "cnn-unit", **NETWORK, "unit": unit, "gain": 20.0}


def test_pack_passes_covers_every_row_once_and_keeps_small_passes_alone():
    sizes = [45, 1, 65, 3, 130]
    passes = pack_passes(sizes, 64, exact_min=2)
    seen = {i: [] for i in range(len(sizes))}
    for ranges in passes:
        n = sum(b - a for _, a, b in ranges)
        assert 1 <= n <= 64
        for i, a, b in ranges:
            seen[i] += range(a, b)
        if n < 2:  # a pass of one row: exactly a caller's own one-row pass (caller 1's row, caller 2's 65th)
            assert ranges in ([(1, 0, 1)], [(2, 64, 65)])
    assert all(sorted(rows) == list(range(n)) for (i, rows), n in zip(seen.items(), sizes))
    assert len(passes) == 2 + -(-(45 + 64 + 3 + 130) // 64)  # the two one-row passes, the rest packed full
    assert [sum(b - a for _, a, b in p) for p in pack_passes([40] * 8, 64)] == [64] * 5  # 8 probes of 40
    assert [sum(b - a for _, a, b in p) for p in pack_passes([45] * 3, 64)] == [45, 45, 45]  # evenly split


def test_shared_passes_give_each_caller_its_own_features_bit_for_bit():
    """The measured rule behind exactness (server/engine/torchpaths.py exact_pass_min): on the CPU in fp32 a
    row computes alike in every pass of >= 2 rows; a one-row pass differs at float32 rounding."""
    from server.engine.stages import make_stage

    stage = make_stage("cnn", **NETWORK, device="cpu")
    rng = np.random.default_rng(0)
    batches = [rng.random((n, 16, 16, 3), dtype=np.float32) for n in (45, 1, 65, 2, 13)]
    alone = [stage.features(b) for b in batches]
    shared = stage.features_many(batches)
    for a, s in zip(alone, shared):
        assert a.shape == s.shape and np.array_equal(a, s)
    # packing the one-row callers in with the others moves them by float32 rounding only
    one = stage.features(batches[1])
    packed = stage.features(np.concatenate([batches[0][:5], batches[1]]))[5:]
    rel = np.abs(packed - one).max() / np.abs(one).max()
    print(f"one-row pass vs the same row in a shared pass: max relative difference {rel:.1e}")
    assert rel < 1e-5


@pytest.mark.parametrize("kind", ["cnn-unit", "model-unit"])
def test_probes_run_together_equal_each_probe_run_alone(kind):
    """CNN units measured in their own layer (one network for units and stage, its `features` batched), and
    numpy model units measured in a shared `cnn` stage: every phase's responses, distances, codes and the
    evaluation are identical."""
    if kind == "cnn-unit":
        subjects = [cnn_unit(u) for u in ([0], [3], [9], [999])]  # the last one's unit does not exist
        stages = [{"name": "cnn", **NETWORK}]  # the units' own layer: one network serves stage and units
    else:
        subjects = [{"name": "complex-cell", "orientation": o, "wavelength": 6.0} for o in (0.0, 60.0, 120.0)]
        stages = [{"name": "cnn", "architecture": "resnet18", "layer": "layer1", "input_size": 32}]
    configs = [parse_config(probe_config(s, seed, mode, stages))
               for s, seed, mode in zip(subjects, (0, 1, 2, 3), ("invariance", "adversarial") * 2)]
    assert len({group_key(c.model_dump()) for c in configs}) == 1

    torch.set_num_threads(1)
    together, lockstep = run_together(len(configs), lambda i, models: run_probe(configs[i], models=models))
    assert lockstep.passes < lockstep.calls  # calls did meet in shared passes
    for config, got in zip(configs, together):
        if config.subject.params.get("unit") == [999]:  # failed alone, as it does alone; the others went on
            assert str(got).startswith("subject.unit: channel 999 out of range")
            continue
        alone = run_probe(config)
        assert [p.name for p in got.phases] == [p.name for p in alone.phases] == ["maximize", config.mode]
        for a, b in zip(alone.phases, got.phases):
            assert len(a.reports) == len(b.reports) > 0
            for ra, rb in zip(a.reports, b.reports):
                assert np.array_equal(ra.responses, rb.responses) and np.array_equal(ra.fitness, rb.fitness)
                for k in ra.distances:
                    assert np.array_equal(ra.distances[k], rb.distances[k])
            assert np.array_equal(a.selection.code, b.selection.code)
        assert np.array_equal(alone.selected_image, got.selected_image)
        assert alone.evaluation["stretch"] == got.evaluation["stretch"] > 0
        assert alone.evaluation["retention"] == got.evaluation["retention"]


def test_grouping_keeps_probes_without_torch_models_alone():
    class P:
        def __init__(self, config):
            self.config = config

    cnn = [P(probe_config(cnn_unit([u]), s, "invariance", ["pixel"])) for u in range(5) for s in (0, 1)]
    model = [P(probe_config({"name": "complex-cell"}, s, "invariance", ["pixel"])) for s in range(3)]
    other_net = [P(probe_config(cnn_unit([0]) | {"layer": "layer1"}, 0, "invariance", ["pixel"]))]
    groups = group_probes(cnn + model + other_net, 4)
    assert sorted(len(g) for g in groups) == [1, 1, 1, 1, 3, 3, 4]  # 10 alike: 4 + 3 + 3; 3 + 1 alone
    assert all(len({group_key(p.config) for p in g}) == 1 for g in groups)
    assert group_key(model[0].config) is None
    assert group_probes(cnn, 1) == [[p] for p in cnn]


# -- `snslab sweep` with batch_probes, as a user runs it -------------------------------------------------
UNITS = {"u3": [3], "bad": [999], "u9": [9]}


def sweep_file(folder: Path) -> Path:
    net = ", ".join(f"{k} = {v!r}" for k, v in NETWORK.items()).replace("'", '"')
    units = ", ".join(f'{{unit = {v}, label = "{k}"}}' for k, v in UNITS.items())
    text = f'''name = "batched"
output = "{folder / 'out'}"
[resources]
num_cpus = 1
batch_probes = 3
[base]
{sweep_base()}
[base.subject]
name = "cnn-unit"
gain = 20.0
{net.replace(", ", chr(10))}
[grid]
units = [{units}]
probes = ["invariance", "adversarial"]
seeds = [0, 1]
'''
    path = folder / "sweep.toml"
    path.write_text(text)
    return path


def single_file(folder: Path, unit: str, mode: str, seed: int) -> Path:
    net = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in NETWORK.items())
    path = folder / f"{unit}-{mode}-{seed}.toml"
    path.write_text(single_probe(mode, seed, folder / "single",
                                 f"[subject]\nname = \"cnn-unit\"\ngain = 20.0\nunit = {UNITS[unit]}\n{net}"))
    return path


def rows(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT p.key, p.status, p.attempt, p.error, p.session_ids, p.started_at, p.finished_at, p.worker, "
            "p.labels, p.summary FROM sweep_probes p JOIN sweeps s ON s.id = p.sweep_id "
            "WHERE s.name = 'batched'")).mappings().all()
    return {r["key"]: dict(r) for r in got}


@pytest.mark.slow
def test_batched_sweep_resumes_after_sigkill_and_matches_single_runs(db_url, db_engine, repo, tmp_path):
    from test_sweep_ray import kill_ray, ray_processes

    spec = sweep_file(tmp_path)
    temp_dir = tempfile.mkdtemp(prefix="rt")
    mark = uuid.uuid4().hex
    env = dict(os.environ, DATABASE_URL=url_text(db_url), SNSLAB_DATA_DIR=str(tmp_path / "data"),
               SNSLAB_SWEEP_TEST=mark, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "server.cli", "sweep", str(spec), "--num-cpus", "2", "--quiet",
           "--ray-temp-dir", temp_dir]
    try:
        # 12 probes in 4 groups of 3 (the middle two mix failing and good probes), two at a time on 2 CPUs;
        # kill the driver with SIGKILL as soon as one probe is done
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        t0 = deadline = time.monotonic()
        deadline += 240
        while not any(r["status"] == "completed" for r in rows(db_engine).values()):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no probe finished"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_ray(mark)
        before = rows(db_engine)
        finished = {k: r for k, r in before.items() if r["status"] in ("completed", "failed")}
        assert len(before) == 12 and 1 <= len(finished) < 8, "the kill must come midway"
        print(f"killed at {time.monotonic() - t0:.1f} s with {len(finished)} probes finished")

        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        m = re.search(r"sweep batched: 12 probes, (\d+) already finished, (\d+) to run", out.stdout)
        assert m and int(m.group(1)) == len(finished) and int(m.group(2)) == 12 - len(finished), out.stdout
        print(f"second run done at {time.monotonic() - t0:.1f} s")
        after = rows(db_engine)
        for k, r in finished.items():  # untouched by the second run
            assert (after[k]["attempt"], after[k]["session_ids"], after[k]["finished_at"]) == \
                   (r["attempt"], r["session_ids"], r["finished_at"])
        assert all(after[k]["attempt"] == 2 for k in set(after) - set(finished))
        completed = [r for r in after.values() if r["status"] == "completed"]
        failed = [r for r in after.values() if r["status"] == "failed"]
        assert len(completed) == 8 and len(failed) == 4, [(r["labels"], r["error"]) for r in failed]
        assert all(r["labels"]["unit"] == "bad" and r["error"].startswith("ConfigError: subject.unit: channel 999")
                   for r in failed)
        assert "in all completed 8, failed 4" in out.stdout
        # grouped: probes of one task ran at the same time in the same worker process (alone they never do)
        second = sorted((r for r in after.values() if r["attempt"] == 2), key=lambda r: r["started_at"])
        together = [(a, b) for a in second for b in second if a is not b and a["worker"] == b["worker"]
                    and a["started_at"] <= b["started_at"] < a["finished_at"]]
        assert together, [(r["worker"], r["started_at"], r["finished_at"]) for r in second]
        for r in completed:
            assert len(r["session_ids"]) == 2 and 0.0 < r["summary"]["stretch"] <= 1.0
            assert all(repo.session_summary(sid).status == "completed" for sid in r["session_ids"])

        # the stored sessions equal single `snslab insilico` runs with the same seeds
        for unit, mode, seed in (("u9", "adversarial", 1),):  # (more in-process, above)
            r = next(r for r in completed if (r["labels"]["unit"], r["labels"]["probe"], r["labels"]["seed"])
                     == (unit, mode, seed))
            single = subprocess.run([sys.executable, "-m", "server.cli", "insilico",
                                     str(single_file(tmp_path, unit, mode, seed)), "--quiet"],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert single.returncode == 0, single.stderr
            ids = dict(p.split("=") for p in re.search(r"stored sessions: (.*)", single.stdout).group(1).split(", "))
            assert list(ids) == ["maximize", mode]
            for sweep_sid, single_sid in zip(r["session_ids"], ids.values()):
                a, b = repo.load_history(sweep_sid), repo.load_history(uuid.UUID(single_sid))
                assert len(a) == len(b) > 0
                for col in ("generation", "order_in_batch", "kind", "codes", "counts"):
                    x, y = getattr(a, col), getattr(b, col)
                    assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), col
        assert wait_for(lambda: not ray_processes(mark), 30, 0.5), ray_processes(mark)
    finally:
        kill_ray(mark)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "8"])
def test_a_bad_batch_probes_is_refused_in_one_line(value):
    from server.engine.base import ConfigError
    from server.sweep.spec import expand

    with pytest.raises(ConfigError) as err:
        expand({"resources": {"batch_probes": value}, "grid": {"seeds": [0]}})
    assert str(err.value).startswith(f"resources.batch_probes: bad value {value!r} (allowed: a positive integer")
    assert expand({"resources": {"batch_probes": 8}, "grid": {"seeds": [0]}}).batch_probes == 8


def test_a_failing_call_fails_only_its_probe_and_the_others_go_on_without_it():
    """A shared pass that raises is retried call by call: the error reaches the probe that caused it; that
    probe leaves and the next meeting batches the others alone."""
    import threading

    from server.engine.lockstep import Lockstep, SharedStage
    from server.engine.stages import make_stage

    stage = make_stage("cnn", **NETWORK, device="cpu")
    lockstep = Lockstep(3)
    shared = SharedStage(stage, lockstep)
    rng = np.random.default_rng(1)
    inputs = [rng.random((5, 16, 16, 3), dtype=np.float32), rng.random((5, 16, 16, 4), dtype=np.float32),
              rng.random((7, 16, 16, 3), dtype=np.float32)]
    out: list = [None] * 3

    def probe(i):
        with lockstep.participant(i):
            try:
                out[i] = [shared.features(inputs[i]), shared.features(inputs[i][::-1])]  # two meetings
            except Exception as exc:  # noqa: BLE001
                out[i] = exc

    threads = [threading.Thread(target=probe, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    with pytest.raises(Exception) as alone:
        stage.features(inputs[1])
    assert type(out[1]) is type(alone.value) and str(out[1]) == str(alone.value)
    for i in (0, 2):
        assert np.array_equal(out[i][0], stage.features(inputs[i]))
        assert np.array_equal(out[i][1], stage.features(inputs[i][::-1]))
    assert (lockstep.passes, lockstep.calls) == (3 + 1, 3 + 2)  # retried one by one; then one shared pass
