"""The paper's claims on units whose answers we know (DCT generator, model complex cell, its MEI as reference)."""

import numpy as np
import pytest

from server.config import parse_config
from server.engine.evaluation import retention_and_stretch
from server.insilico import run_probe

BASE = {
    "seed": 1,
    "population": 24,
    "generator": {"name": "dct", "code_size": 256, "image_size": 32, "channels": 1},
    "subject": {"name": "complex-cell"},
    "reference": {"source": "maximize", "generations": 40},
    "stages": ["pixel"],
}


def _run(mode, noise="none", generations=60, **extra):
    cfg = BASE | {"mode": mode, "generations": generations, "noise": {"kind": noise}} | extra
    return run_probe(parse_config(cfg))


@pytest.fixture(scope="module")
def mei_run():
    return _run("maximize", generations=40)


def test_maximize_finds_a_near_saturating_most_exciting_image(mei_run):
    subject = mei_run.subject
    grey = np.full((1, 32, 32, 3), 0.5, np.float32)
    mei_rate = subject.rate(mei_run.selected_image[None])[0, 0]
    # baseline 2 Hz for a blank screen, gain 100 Hz: the MEI must drive the unit close to saturation
    assert subject.rate(grey)[0, 0] == pytest.approx(2.0)
    assert mei_rate > 85.0


@pytest.mark.parametrize("noise", ["none", "poisson"])
def test_invariance_probe_stretches_farther_than_every_affine_control_that_keeps_the_response(noise):
    res = _run("invariance", noise=noise, generations=80)
    ev = res.evaluation
    kept = [c for c in ev["affine_controls"] if c["retention"] >= 0.9 and c["stretch"] > 0]
    assert kept, "some affine controls (small translations, 180-degree rotation) keep the response"
    assert ev["retention"] >= 0.9
    assert ev["stretch"] > max(c["stretch"] for c in kept)
    # the 180-degree rotation of a centred complex cell's MEI is a true invariance: it is among the kept
    assert any(c["control"] == "rotation:180" for c in kept)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_adversarial_probe_silences_the_unit_with_a_small_pixel_change(seed):
    # sigma0 0.3: starting at the reference code, the default step (1.0) already leaves the 20% ball. The
    # reference is the one a sigma0 0.3 maximize finds (below saturation): from a saturating MEI (the
    # default maximize) this search does not halve the response within 20% (issue 12, item 1, open).
    res = _run("adversarial", generations=60, seed=seed, optimizer={"name": "sepcma", "sigma0": 0.3},
               maximize={"optimizer": {"name": "sepcma", "sigma0": 0.3}})
    pool = res.probe.search.pool
    images = res.generator.render(np.array(pool.codes))
    retention, stretch = retention_and_stretch(res.subject, res.reference_image, images)
    hit = (stretch <= 0.2) & (retention <= 0.5)
    assert hit.any(), f"best retention within 20% stretch: {retention[stretch <= 0.2].min():.2f}"


def test_same_seed_same_run_bit_for_bit():
    a = _run("invariance", generations=8)
    b = _run("invariance", generations=8)
    assert np.array_equal(a.probe.selection.code, b.probe.selection.code)
    assert all(np.array_equal(x.fitness, y.fitness) for x, y in zip(a.probe.reports, b.probe.reports))
    c = run_probe(parse_config(BASE | {"mode": "invariance", "generations": 8, "seed": 2, "noise": {"kind": "none"}}))
    assert not np.array_equal(a.probe.selection.code, c.probe.selection.code)
