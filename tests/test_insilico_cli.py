"""The in-silico runner's command line, outputs, bad-config errors and resumable search state."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from server.cli import app
from server.config import parse_config
from server.engine.base import ConfigError
from server.engine.far_reach import N_AFFINE_SEEDS, TRANSFORMS
from server.insilico import run_probe
from server.probe_setup import build_generator, build_stages, build_subject

ROOT = Path(__file__).resolve().parents[1]
SMALL = """
mode = "invariance"
seed = 3
population = 12
generations = 6
stages = ["pixel"]
[generator]
name = "dct"
code_size = 64
image_size = 16
channels = 1
[subject]
name = "complex-cell"
wavelength = 6.0
[reference]
source = "maximize"
generations = 5
"""


def test_insilico_command_writes_summary_and_plots(tmp_path):
    cfg = tmp_path / "probe.toml"
    cfg.write_text(SMALL.replace('stages = ["pixel"]', f'stages = ["pixel"]\noutput = "{tmp_path / "out"}"'))
    result = CliRunner().invoke(app, ["insilico", str(cfg), "--quiet", "--no-store"])
    assert result.exit_code == 0, result.output
    # 6 x (12 new candidates + 2 x 5 far-reach candidates + 4 reference repeats) + the far-reach seeds (4
    # transforms, the affine copies and windows) shown 3 times each, plus the re-tests of front candidates (at
    # most 10 a generation)
    seeds = 3 * (len(TRANSFORMS) + N_AFFINE_SEEDS)
    shown = int(re.search(r"invariance: 6 generations, (\d+) presentations", result.output).group(1))
    assert 156 + seeds <= shown <= 156 + seeds + 5 * 10
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluation"]["generations"] == 6
    assert len(summary["per_generation"]) == 6
    assert 0 < summary["evaluation"]["stretch"] <= 1.0
    for name in ("front.png", "grid.png", "selected.png", "reference.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # under spike noise the reported image was chosen again on fresh presentations (server/engine/verify.py)
    v = summary["evaluation"]["verification"]
    assert 0 < v["presentations"] <= parse_config({}).verify_budget and v["candidates"] == len(v["tested"]) >= 1
    assert v["presentations"] == sum(t["shows"] for t in v["tested"])
    assert v["chosen"] in [t | {"se_hz": v["chosen"]["se_hz"], "passed": v["chosen"]["passed"]} for t in v["tested"]]
    said = re.search(r"verified on (\d+) fresh presentations of (\d+) candidates: the reported image measured "
                     r"([\d.]+) \+- [\d.]+ Hz against the reference's ([\d.]+) Hz, (established|not established)",
                     result.output)
    assert said is not None, result.output
    assert (int(said[1]), int(said[2])) == (v["presentations"], v["candidates"])
    assert float(said[3]) == pytest.approx(v["chosen"]["rate_hz"], abs=0.05)
    assert (said[5] == "established") == v["chosen"]["passed"]


def test_help_explains_every_field():
    text = CliRunner().invoke(app, ["insilico", "--help"], terminal_width=200).output
    for field in ("mode", "population", "generator.name", "reference.source", "noise.window_ms", "early_stop.enabled"):
        assert field in text


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"mode": "stretchy"}, "mode: unknown mode 'stretchy' (allowed: maximize, invariance, adversarial)"),
        ({"generator": {"name": "gan"}}, "generator"),
        ({"stages": ["retina"]}, "stage"),
        ({"stages": [{"name": "cnn", "architecture": "resnet18", "layer": "layer9.conv"}]}, "layer"),
        ({"optimizer": {"name": "adam"}}, "optimizer"),
        ({"population": 2}, "population"),
        ({"noise": {"kind": "gaussian"}}, "noise.kind"),
    ],
)
def test_bad_configs_fail_with_one_line_naming_the_field(patch, message):
    base = {"mode": "invariance", "generator": {"name": "dct", "code_size": 64, "image_size": 16}}
    with pytest.raises((ConfigError, ValueError)) as err:
        cfg = parse_config(base | patch)
        build_generator(cfg)
        build_stages(cfg)
        run_probe(cfg)
    text = str(err.value)
    assert "\n" not in text and message in text, text
    if isinstance(err.value, ConfigError) and patch.get("generator"):
        assert "allowed" in text and "dct" in text


def test_cli_reports_bad_config_in_one_line_without_traceback(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('mode = "invariance"\n[generator]\nname = "biggan"\n')
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "insilico", str(cfg)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: generator") and "Traceback" not in result.stderr


def test_wrong_code_size_and_nan_responses_are_rejected():
    cfg = parse_config({"mode": "maximize", "generator": {"name": "dct", "code_size": 64, "image_size": 16}})
    gen = build_generator(cfg)
    with pytest.raises(ConfigError, match=r"^code: wrong code size 65 .*allowed: 64"):
        gen.render(np.zeros((1, 65)))
    from server.engine.optimizers import make_optimizer
    from server.engine.probes import Probe
    from server.engine.search import SnSSearch

    s = SnSSearch(gen, {}, Probe("maximize", ()), make_optimizer("sepcma", np.zeros(64), 1.0, 8, seed=0), seed=0)
    s.ask()
    with pytest.raises(ValueError, match="^responses: must be finite and non-negative"):
        s.tell(np.full((8, 1), np.nan))
    with pytest.raises(ValueError, match="^responses: must be finite and non-negative"):
        s.tell(-np.ones((8, 1)))
    s.tell(np.ones((8, 1)))  # nothing was consumed by the rejected calls
    assert s.generation == 1


def test_search_state_restores_to_an_identical_continuation():
    cfg = parse_config(
        {
            "mode": "invariance", "seed": 5, "population": 10, "generations": 12, "noise": {"kind": "none"},
            "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
            "subject": {"name": "complex-cell", "wavelength": 6.0}, "reference": {"source": "maximize", "generations": 4},
        }
    )
    full = run_probe(cfg)
    search = full.probe.search
    gen = build_generator(cfg)
    subject = build_subject(cfg, gen)
    ref = full.reference_image

    # Re-run the probe phase: save after generation 5, restore into a fresh search, continue.
    from server.engine.optimizers import make_optimizer
    from server.engine.search import SnSSearch

    def fresh():
        opt = make_optimizer("sepcma", np.zeros(64), 1.0, 10, seed=1)
        return SnSSearch(gen, build_stages(cfg), search.probe, opt, seed=7, reference_image=ref, max_generations=12)

    def step(s):
        p = s.ask()
        return s.tell(subject.rate(p.images), subject.rate(ref[None]))

    a = fresh()
    reports_a = [step(a) for _ in range(12)]
    b = fresh()
    for _ in range(5):
        step(b)
    blob = b.state()
    c = fresh()
    c.load_state(blob)
    reports_c = [step(c) for _ in range(7)]
    for ra, rc in zip(reports_a[5:], reports_c):
        assert np.array_equal(ra.fitness, rc.fitness)
    assert np.array_equal(a.result().code, c.result().code)
