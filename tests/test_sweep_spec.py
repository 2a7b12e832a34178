"""The sweep file: grid expansion, labels, the cnn stage inheriting the unit's network, and bad files
refused with one line naming the field (the `snslab sweep` command included)."""

import subprocess
import sys
from pathlib import Path

import pytest

from server.engine.base import ConfigError
from server.sweep.spec import config_key, expand, load_sweep

ROOT = Path(__file__).resolve().parents[1]
BASE = {"population": 8, "generations": 2, "generator": {"name": "dct", "code_size": 16, "image_size": 8}}


def test_grid_expands_every_combination_with_labels_and_distinct_keys():
    spec = expand({"name": "s", "base": BASE, "grid": {
        "networks": [{"name": "complex-cell", "label": "cx"}, {"name": "simple-cell"}],
        "units": [{"orientation": 0.0, "label": "o0"}, {"orientation": 90.0, "label": "o90"}],
        "probes": ["invariance", {"mode": "adversarial", "label": "adv", "bounds": {"unit": ">10%"}}],
        "seeds": [3, 4]}})
    assert len(spec.probes) == 2 * 2 * 2 * 2
    first, last = spec.probes[0], spec.probes[-1]
    assert first.labels == {"network": "cx", "unit": "o0", "probe": "invariance", "seed": 3, "mode": "invariance"}
    assert last.labels["network"] == '{"name": "simple-cell"}' and last.labels["probe"] == "adv"
    assert last.config["subject"] == {"name": "simple-cell", "orientation": 90.0}
    assert last.config["bounds"] == {"unit": ">10%"} and last.config["seed"] == 4
    assert len({p.key for p in spec.probes}) == 16
    assert (spec.num_cpus, spec.num_gpus) == (1.0, 0.0)
    # the key is the config's hash without its output folder: a re-run of the same file finds the same probes
    again = expand({"name": "s", "output": "elsewhere", "base": BASE, "grid": {"seeds": [3]}})
    cfg = dict(again.probes[0].config)
    cfg.pop("output")
    assert again.probes[0].key == config_key(cfg)


def test_a_cnn_stage_without_architecture_measures_in_the_units_own_network():
    spec = expand({"base": BASE | {"subject": {"name": "cnn-unit", "weights": "w.pt"},
                                   "stages": [{"name": "cnn", "layer": "layer1"}, "pixel"]},
                   "grid": {"networks": ["resnet18", "alexnet"], "layers": ["layer2"], "units": [[1]]}})
    stages = [p.config["stages"][0] for p in spec.probes]
    assert [(s["architecture"], s["weights"], s["layer"]) for s in stages] == [
        ("resnet18", "w.pt", "layer1"), ("alexnet", "w.pt", "layer1")]
    assert spec.probes[1].config["subject"] == {"name": "cnn-unit", "weights": "w.pt", "architecture": "alexnet",
                                                "layer": "layer2", "unit": [1]}


@pytest.mark.parametrize("raw, message", [
    ({"grid": {"colours": [1]}}, "grid.colours: unknown axis"),
    ({"grid": {"seeds": []}}, "grid.seeds: must be a non-empty list"),
    ({"grid": {"seeds": [-1]}}, "grid.seeds: bad seed -1"),
    ({"grid": {"probes": ["stretchy"]}}, "probe 0 (probe=stretchy): mode: unknown mode 'stretchy' (allowed: maximize"),
    ({"grid": {"seeds": [1, 1]}}, "grid: probes 0 and 1 are the same probe"),
    ({"resources": {"num_gpus": -1}}, "resources.num_gpus: bad value -1"),
    ({"grid": {"seeds": [1]}, "probe": [{"seed": 2}]}, "grid: give either [grid] or [[probe]] tables, not both"),
    ({"workers": 3}, "workers: unknown field"),
])
def test_bad_sweep_files_fail_with_one_line_naming_the_field(raw, message):
    with pytest.raises(ConfigError) as err:
        expand({"base": BASE} | raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_probe_list_and_the_example_files():
    spec = expand({"base": BASE, "probe": [{"label": "a", "seed": 1}, {"seed": 2, "mode": "adversarial"}]})
    assert [p.labels["probe"] for p in spec.probes] == ["a", "1"] and spec.probes[1].config["mode"] == "adversarial"
    assert len(load_sweep(ROOT / "examples" / "sweep-model-units.toml").probes) == 24
    assert len(load_sweep(ROOT / "examples" / "sweep-resnet50.toml").probes) == 16


def test_sweep_command_refuses_a_bad_file_in_one_line_and_explains_itself(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[grid]\nseeds = "all"\n')
    out = subprocess.run([sys.executable, "-m", "server.cli", "sweep", str(bad)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == "error: grid.seeds: must be a non-empty list"
    help_text = subprocess.run([sys.executable, "-m", "server.cli", "sweep", "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""}).stdout
    for word in ("--address", "--num-cpus", "resumes", "networks", "num_gpus", "probes.parquet"):
        assert word in help_text
