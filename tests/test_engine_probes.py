"""Probe objectives, bounds and early stopping against natural images (the reference's rules, defects fixed)."""

import numpy as np
import pytest

from server.config import parse_config
from server.engine.base import ConfigError
from server.engine.probes import Bound, EarlyStop, Probe, stage_distances, unit_distances
from server.insilico import run_probe


def test_objective_signs_follow_the_probe():
    d = {"pixel": np.array([1.0, 2.0]), "unit": np.array([3.0, 4.0])}
    inv = Probe("invariance", ("pixel",)).objectives(d, {})
    adv = Probe("adversarial", ("pixel",)).objectives(d, {})
    assert inv.tolist() == [[1.0, -3.0], [2.0, -4.0]]  # stretch pixels, squeeze the unit
    assert adv.tolist() == [[-1.0, 3.0], [-2.0, 4.0]]  # squeeze pixels, stretch the unit


def test_bounds_parse_and_test_the_right_side():
    # The reference's ">t%" tested "<"; here ">" means greater.
    above = Bound.parse("pixel", ">50%")
    below = Bound.parse("unit", "<2.5")
    assert above.satisfied(np.array([4.0, 6.0]), reference_norm=10.0).tolist() == [False, True]
    assert below.satisfied(np.array([2.0, 3.0]), reference_norm=1.0).tolist() == [True, False]
    probe = Probe("invariance", ("pixel",), bounds=(below,))
    F = probe.objectives({"pixel": np.array([1.0, 9.0]), "unit": np.array([1.0, 5.0])}, {})
    assert np.isfinite(F[0]).all() and np.isneginf(F[1]).all()  # the violator is dominated by everyone
    with pytest.raises(ConfigError, match="bounds.pixel: cannot parse"):
        Bound.parse("pixel", "about 5")
    with pytest.raises(ConfigError, match="bounds.layer4"):
        Probe("invariance", ("pixel",), bounds=(Bound.parse("layer4", "<1"),))


def test_early_stop_counts_candidates_past_the_natural_threshold_from_generation_5():
    inv = EarlyStop("invariance", threshold=50.0)
    high = np.full(50, 60.0)
    high[:5] = 10.0  # 5 of 50 still below the best natural image
    assert not inv.should_stop(4, high)  # too early
    assert inv.should_stop(5, high)
    high[:6] = 10.0
    assert not inv.should_stop(6, high)  # 6 > 5 remaining
    adv = EarlyStop("adversarial", threshold=5.0)
    low = np.full(50, 1.0)
    low[:5] = 20.0  # 5 of 50 still above the weakest natural image
    assert adv.should_stop(7, low)


def test_early_stop_ends_an_invariance_run_before_its_budget():
    cfg = parse_config({
        "mode": "invariance", "seed": 2, "population": 16, "generations": 80, "noise": {"kind": "none"},
        "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
        "subject": {"name": "complex-cell", "wavelength": 6.0}, "reference": {"source": "maximize", "generations": 10},
        "early_stop": {"enabled": True, "natural_images": 50},
    })
    res = run_probe(cfg)
    assert 5 <= len(res.probe.reports) < 80
    last = res.probe.reports[-1]
    assert last.stop and res.probe.search.early_stop.remaining(last.responses) <= 1  # 10% of 16


def test_distances():
    f = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert stage_distances(f, np.zeros(2)).tolist() == [5.0, 0.0]
    assert unit_distances(np.array([[1.0, 1.0]]), np.array([4.0, 5.0])).tolist() == [5.0]


@pytest.mark.parametrize("confirm", [True, False])
def test_reported_front_names_scored_images_and_holds_the_selection(confirm):
    """`SnSSearch.reported_front()` gives (generation, row) of the front the probe reports; the selected
    image is on it, and without confirmation it is the non-dominated set of the pool."""
    from server.engine.pareto import first_front

    cfg = parse_config({
        "mode": "invariance", "seed": 2, "population": 8, "generations": 6, "confirm": confirm,
        "retests": 3 if confirm else 0,
        "generator": {"name": "dct", "code_size": 32, "image_size": 8, "channels": 1},
        "stages": ["pixel"], "noise": {"kind": "poisson", "window_ms": 100},
        "subject": {"name": "complex-cell", "image_size": 8, "wavelength": 4.0},
        "reference": {"source": "maximize", "generations": 3},
    })
    res = run_probe(cfg)
    search = res.probe.search
    front = search.reported_front()
    assert front.ndim == 2 and front.shape[1] == 2 and len(front) >= 1
    sizes = {r.generation: len(r.fitness) for r in res.probe.reports}
    assert all(0 <= i < sizes[g] for g, i in front)  # every member is a scored candidate of its generation
    sel = search.result()
    assert (sel.generation, sel.index) in {tuple(x) for x in front}
    if not confirm:
        pool = search.pool
        distances = {"pixel": np.array([d["pixel"] for d in pool.distances]),
                     "unit": unit_distances(np.array(pool.responses), search.reference_response)}
        rows = first_front(search.probe.objectives(distances, search.reference_norms))
        assert sorted(map(tuple, front)) == sorted(zip(np.array(pool.generation)[rows], np.array(pool.index)[rows]))
    with pytest.raises(ValueError, match="maximize run has no front"):
        res.phases[0].search.reported_front()


def test_invariance_start_noise_or_reference():
    """The published invariance start is small noise around zero; `start_from = "reference"` starts at the
    reference code (the benchmark's comparison start), and then the early stop, which marks arrival from
    noise, is refused in one line."""
    from server.probe_setup import build_generator, build_search, build_stages

    base = {"mode": "invariance", "seed": 5, "population": 8, "reference": {"source": "code"},
            "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1}, "stages": ["pixel"]}
    ref = np.random.default_rng(1).standard_normal(64) * 3
    means = {}
    for start in ("noise", "reference"):
        cfg = parse_config(base | {"start_from": start})
        gen = build_generator(cfg)
        search = build_search(cfg, gen, build_stages(cfg), reference_code=ref,
                              reference_image=gen.render(ref[None])[0])
        means[start] = search.ask().codes[:8].mean(axis=0)  # the main search's population (not far reach's)
    assert parse_config(base).start_from == "noise"
    assert np.linalg.norm(means["reference"] - ref) < np.linalg.norm(means["noise"] - ref) / 3
    with pytest.raises(ConfigError, match=r"^early_stop.enabled: .*allowed: start_from = 'noise'"):
        parse_config(base | {"start_from": "reference", "early_stop": {"enabled": True}})
