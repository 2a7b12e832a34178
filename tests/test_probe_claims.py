"""Issue 12: an unbiased reference that must leave baseline, a user's own model neuron, and every example's
claim against the controls, each run the way a user runs it (`snslab insilico` in its own process)."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from server.config import config_record, parse_config
from server.engine.controls import contrast_path, noise_at
from server.engine.reference_check import ReferenceAtBaseline, judge_reference
from server.insilico import run_probe
from snslab_common.errors import ConfigError
from snslab_common.neurons import make_model_neuron

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.toml") if not p.name.startswith("sweep-"))


def snslab(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "server.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def write_toml(path: Path, data: dict) -> Path:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines, tables = [], []

    def emit(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict):
                tables.append((f"{prefix}{k}", v))
            else:
                lines.append(f"{k} = {val(v)}")

    emit("", data)
    while tables:
        name, d = tables.pop(0)
        lines.append(f"[{name}]")
        for k, v in d.items():
            if isinstance(v, dict):
                tables.append((f"{name}.{k}", v))
            else:
                lines.append(f"{k} = {val(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


STUCK = {
    "mode": "adversarial", "seed": 4, "population": 8, "generations": 3, "stages": ["pixel"],
    "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
    "subject": {"name": "complex-cell", "wavelength": 6.0},
    "reference": {"source": "maximize", "generations": 3},
    # The maximize search barely moves from its grey start: the reference stays at baseline.
    "maximize": {"optimizer": {"name": "sepcma", "sigma0": 1e-4}},
    "optimizer": {"name": "sepcma", "sigma0": 0.3},
}


def test_a_maximize_stuck_at_baseline_stops_with_the_message(tmp_path):
    cfg = write_toml(tmp_path / "stuck.toml", STUCK | {"output": str(tmp_path / "out")})
    proc = snslab("insilico", cfg, "--no-store", "-q")
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("error: reference: re-measured rate") or "reference: re-measured rate" in err
    assert "not clearly above the blank screen" in err and "[maximize.optimizer]" in err
    assert not (tmp_path / "out" / "summary.json").exists()
    # The same config with a maximize that moves passes the check and runs the probe.
    ok = STUCK | {"maximize": {"optimizer": {"name": "sepcma", "sigma0": 1.0}}, "output": str(tmp_path / "ok")}
    proc = snslab("insilico", write_toml(tmp_path / "ok.toml", ok), "--no-store", "-q")
    assert proc.returncode == 0, proc.stderr
    rc = json.loads((tmp_path / "ok" / "summary.json").read_text())["evaluation"]["reference_check"]
    assert rc["passed"] and rc["reference_rate_hz"] >= 3 * rc["baseline_rate_hz"]


def test_the_check_is_configurable_and_in_process_raises():
    with pytest.raises(ReferenceAtBaseline, match="not clearly above"):
        run_probe(parse_config(STUCK))
    # Without the check (check_repeats = 0) the same stuck run goes ahead, as before this check existed.
    res = run_probe(parse_config(STUCK | {"reference": STUCK["reference"] | {"check_repeats": 0}}))
    assert "reference_check" not in res.evaluation and res.evaluation["generations"] == 3


def test_judge_reference_numbers():
    rng = np.random.default_rng(0)
    ref, base = rng.poisson(50 * 0.15, 400) / 0.15, rng.poisson(2 * 0.15, 400) / 0.15
    chk = judge_reference(ref, base)
    assert chk.passed and abs(chk.reference_rate_hz - 50) < 4 * chk.reference_se_hz
    z = (ref.mean() - base.mean()) / np.hypot(ref.std(ddof=1) / 20, base.std(ddof=1) / 20)
    assert chk.z == pytest.approx(z)
    # 5 Hz against 2 Hz is significant with many presentations but not 3x baseline.
    low = judge_reference(rng.poisson(5 * 0.15, 4000) / 0.15, rng.poisson(2 * 0.15, 4000) / 0.15)
    assert low.z > 3 and not low.passed
    assert judge_reference(ref, base, min_ratio=2.0, min_z=1e6).passed is False


def test_contrast_and_noise_controls_are_at_the_stated_distance():
    ref = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    half = contrast_path(ref, np.array([0.5]))[0]
    m = ref.astype(np.float64).mean()
    assert np.allclose(half, m + 0.5 * (ref - m), atol=1e-6)
    imgs = noise_at(ref, 3.0, np.random.default_rng(2), 3)
    d = np.linalg.norm((imgs.astype(np.float64) - ref[None]).reshape(3, -1), axis=1)
    assert np.allclose(d, 3.0, atol=1e-4) and imgs.min() >= 0 and imgs.max() <= 1


def test_controls_in_a_stage_use_its_feature_distances():
    from server.engine.stages import make_stage
    from server.engine.controls import control_table
    from server.engine.evaluation import max_pixel_distance

    cell = make_model_neuron("complex-cell", image_size=16)
    g = np.repeat(cell.g0.reshape(16, 16, 1), 3, axis=-1)
    ref = np.clip(0.5 + 0.5 * g / np.abs(g).max(), 0, 1).astype(np.float32)
    img = np.clip(1.0 - ref, 0, 1)  # contrast-inverted: the complex cell keeps its response exactly
    pix = control_table(cell, ref, img, "invariance", seed=3)
    # The pixel stage's features are the pixels: the same table with distances over ||ref|| instead of the
    # max pixel distance.
    st = control_table(cell, ref, img, "invariance", seed=3, stage=make_stage("pixel"), stage_name="raw")
    k = max_pixel_distance(ref) / np.linalg.norm(ref.astype(np.float64))
    assert pix["stretch_stage"] == "pixel" and st["stretch_stage"] == "raw"
    assert st["probe"]["stretch"] == pytest.approx(pix["probe"]["stretch"] * k)
    assert [a["stretch"] for a in st["affine"]] == pytest.approx([a["stretch"] * k for a in pix["affine"]])
    assert st["farthest_kept"] == pytest.approx({n: v * k for n, v in pix["farthest_kept"].items()})
    # In the Gabor-energy stage the phase-inverted image is at distance ~0: no claim to be farther.
    gab = control_table(cell, ref, img, "invariance", seed=3, stage=make_stage("gabor-energy"),
                        stage_name="gabor-energy")
    assert pix["probe"]["stretch"] > 0.5 and gab["probe"]["stretch"] < 0.05 and not gab["claim_holds"]


# -- a user's own model neuron -------------------------------------------------------------------
def test_python_factory_from_toml_via_the_cli(tmp_path):
    data = tomllib.loads((ROOT / "examples" / "invariance-colour-opponent.toml").read_text())
    data |= {"generations": 4, "population": 12, "output": str(tmp_path / "out"),
             "reference": data["reference"] | {"generations": 20}}
    proc = snslab("insilico", write_toml(tmp_path / "c.toml", data), "--no-store", "-q")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["subject"] == {"name": "python", "factory": "examples.my_neuron:make",
                                            "orientation": 45.0}
    # The colour-opponent cell is blind to luminance: a grey reference would never pass the check.
    assert summary["evaluation"]["reference_check"]["passed"]
    sys.path.insert(0, str(ROOT))
    from examples.my_neuron import ColourOpponentCell

    ref = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "out" / "reference.png"), dtype=np.float32) / 255
    direct = ColourOpponentCell(32, 45.0).rate(ref[None])[0, 0]
    built = make_model_neuron("python", factory="examples.my_neuron:make", image_size=32, orientation=45.0)
    assert built.rate(ref[None])[0, 0] == pytest.approx(direct)


@pytest.mark.parametrize("params, field", [
    ({}, "subject.factory"),
    ({"factory": "no_such_module_xyz:make"}, "subject.factory"),
    ({"factory": "examples.my_neuron"}, "subject.factory"),
    ({"factory": "examples.my_neuron:nothing"}, "subject.factory"),
    ({"factory": "examples.my_neuron:make", "colour": 3}, "subject"),
])
def test_bad_factories_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        make_model_neuron("python", **params)
    assert str(err.value).startswith(field + ":") and "\n" not in str(err.value)


def test_a_torch_module_factory_and_a_module_object_are_recorded_not_serialised(tmp_path):
    torch = pytest.importorskip("torch")
    from server.insilico import write_outputs

    subj = make_model_neuron("python", factory="torch.nn:Identity")
    img = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
    assert np.allclose(subj.rate(img), img.transpose(0, 3, 1, 2).reshape(2, -1))
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 14 * 14, 4))
    cfg = parse_config({"mode": "maximize", "seed": 1, "population": 6, "generations": 2, "noise": {"kind": "none"},
                        "generator": {"name": "dct", "code_size": 16, "image_size": 16, "channels": 3},
                        "subject": {"name": "cnn-unit", "module": conv, "input_size": 16, "normalize": None,
                                    "layer": "2", "baseline": 1.0, "unit": 0},
                        "reference": {"check_repeats": 0}, "output": str(tmp_path / "o")})
    paths = write_outputs(run_probe(cfg))
    rec = json.loads(paths["summary.json"].read_text())["config"]["subject"]
    assert rec["module"].endswith("Sequential object: not recorded>") and config_record(cfg)["subject"] == rec


# -- every shipped example meets its own claim ---------------------------------------------------
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_meets_its_claim(example, tmp_path):
    data = tomllib.loads(example.read_text())
    proc = snslab("insilico", example, "-o", tmp_path / "out", "--no-store", "-q")
    assert proc.returncode == 0, proc.stderr
    ev = json.loads((tmp_path / "out" / "summary.json").read_text())["evaluation"]
    rc = ev["reference_check"]
    assert rc["passed"] and rc["reference_rate_hz"] >= rc["min_ratio"] * rc["baseline_rate_hz"]
    # The re-measured rate is unbiased: within 4 standard errors of the noise-free rate.
    assert abs(rc["reference_rate_hz"] - ev["reference_rate_hz"]) <= 4 * max(rc["reference_se_hz"], 1e-9)
    if data.get("mode", "invariance") == "maximize":
        return
    c = ev["controls"]
    p = c["probe"]
    # The claim, recomputed here from the control numbers in the summary.
    if c["mode"] == "invariance":
        keeps = abs(p["retention"] - 1) <= c["tolerance"]
        beats = {k: keeps and p["stretch"] > v for k, v in c["farthest_kept"].items()}
    else:
        beats = {k: p["change"] > v["change"] for k, v in c["at_probe_stretch"].items()}
    assert beats == c["beats"] and ev["claim_holds"] == all(beats.values())
    assert set(beats) == {"contrast", "noise", "affine"} and "black" in c["padding"]
    # The claim compares distances in the stage the probe stretched (pixels unless it names another).
    stages = data.get("stages", ["pixel"])
    assert c["stretch_stage"] == (stages[0] if isinstance(stages[0], str) else stages[0]["name"])
    if c["stretch_stage"] == "pixel":
        assert p["stretch"] == pytest.approx(ev["stretch"])
    assert ev["claim_holds"], f"{example.name}: claim '{c['claim']}' false: {c['beats']}, {p}"


def test_the_simulated_bridge_builds_a_python_subject_by_name():
    from recording_bridge.adapters.sim import SimSource

    src = SimSource("python", rng=1, subject_params={"factory": "examples.my_neuron:make", "image_size": 16,
                                                     "orientation": 0.0})
    img = np.zeros((1, 16, 16, 3), np.float32)
    img[..., 0] = 0.5 + 0.5 * np.sign(src.subject.g0)  # a red-green grating matched to the cell
    from examples.my_neuron import ColourOpponentCell

    want = ColourOpponentCell(16, 0.0).rate(img)[0, 0]
    assert src.subject.rate(img)[0, 0] == pytest.approx(want) and want > 50
