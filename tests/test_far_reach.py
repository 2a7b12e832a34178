"""Far reach (server/engine/far_reach.py): the invariance probe's bands and seeds reach the far front of a
model unit with an exact front, stay deterministic through state()/load_state(), replay bit for bit from
storage, and the settings refuse bad values in one line."""

import numpy as np
import pytest

from server.config import parse_config
from server.engine.confirm import SEED
from server.engine.far_reach import N_AFFINE_SEEDS, FarReach, band_weights, reference_transforms
from server.insilico import DatabaseRecorder, run_probe
from server.stored import replay
from snslab_common.errors import ConfigError

from bench.sefficiency.fronts import build_instances
from bench.sefficiency.harness import run
from bench.sefficiency.snslab import SnSLab
from bench.sefficiency.zspace import Space

pytest_plugins = ["db_fixtures"]


@pytest.fixture(scope="module")
def far_cells():
    space = Space(side=32, radius=32.0)  # n = 1024: the benchmark's maths, fast
    return build_instances(space, [("complex", "invariance", "partial"), ("mixed", "invariance", "mei")], res=200)


def test_far_reach_finds_the_far_front_the_plain_search_misses(far_cells):
    """Found and reported HV/HV* at 1,000 presentations with the default bands and without them."""
    for inst in far_cells:
        on = run(SnSLab(inst, 0.2, seed=0), inst, 0.2, 0, checkpoints=(1000,)).checkpoints[0]
        off = run(SnSLab(inst, 0.2, seed=0, far_bands=0), inst, 0.2, 0, checkpoints=(1000,)).checkpoints[0]
        assert on.hv_found >= 0.8 and off.hv_found < 0.65, (inst.name, on, off)
        assert on.hv_reported >= 0.7 and on.hv_reported > off.hv_reported + 0.15, (inst.name, on, off)


def test_bands_seeds_and_weights():
    img = (0.3 + 0.4 * np.random.default_rng(0).random((8, 8, 3))).astype(np.float32)  # inverts unclipped
    t = dict(reference_transforms(img))
    assert np.allclose(t["contrast:-1"] - img.mean(), img.mean() - img) and np.array_equal(t["rotation:180"],
                                                                                          np.rot90(img, 2))
    assert band_weights(3) == (3.0, 1.0, 1.0 / 3.0)
    far = FarReach(np.zeros(6), per_band=4, weights=(3.0, 1.0), seeds=np.ones((2, 6)), seed=1)
    assert far.size == 10 and far.ask().shape == (10, 6)
    codes = far.bands[0].pending  # each band asked its own population
    assert codes.shape == (4, 6)
    with pytest.raises(ValueError, match="far reach"):
        FarReach(np.zeros(6), per_band=1)


def test_affine_seeds_and_restart_from_the_confirmed_front():
    """With ``far_restart`` the reference's affine copies are seeds too, and each band restarts from the
    candidate that scores best for its own weight (confirmed change: heavier weight, nearer candidate)."""
    img = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    names = [n for n, _ in reference_transforms(img, affine=True)]
    assert len(names) == 4 + N_AFFINE_SEEDS == len(set(names)) and "scale:0.2" in names and "rotation:0" not in names
    far = FarReach(np.zeros(3), per_band=4, weights=(3.0, 1.0), seed=2, restart_at=2)
    codes = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    for _ in range(2):
        assert not far.wants_restart
        far.tell(np.vstack([far.ask()]), np.full(8, 0.1), np.full(8, 10.0), 10.0, 0.0)
    assert far.wants_restart
    far.restart_from(codes, np.array([0.6, 0.8, 1.0]), np.array([0.0, 0.1, 0.35]))
    # band 0 (w 3): 0.6 | 0.8 - 0.3 | 1 - 1.05 -> the first; band 1 (w 1): 0.6 | 0.7 | 0.65 -> the second
    assert np.allclose(far.bands[0].mean, codes[0]) and np.allclose(far.bands[1].mean, codes[1])


INVARIANCE = {
    "mode": "invariance", "seed": 5, "population": 8, "generations": 5, "start_from": "reference",
    "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
    "subject": {"name": "complex-cell", "wavelength": 6.0}, "noise": {"kind": "poisson"},
    "reference": {"source": "maximize", "generations": 4, "check_repeats": 0},
    "verify_candidates": 0,
}


RESTART = {"far_restart": 2, "far_seed_repeats": 2}
NO_RESTART = {"far_restart": 0, "far_seed_repeats": 1}  # the reference's four transforms shown once


@pytest.mark.parametrize("options", [NO_RESTART, RESTART], ids=["no-restart", "restart"])
def test_state_round_trip_continues_the_same_bands(options):
    from server.probe_setup import build_generator, build_search, build_stages

    cfg = parse_config(INVARIANCE | options)
    gen, stages = build_generator(cfg), build_stages(cfg)
    ref = gen.project(np.random.default_rng(1).normal(size=(1, 64)))[0] * 3
    image = gen.render(ref[None])[0]

    def fresh():
        return build_search(cfg, gen, stages, reference_code=ref, reference_image=image)

    a = fresh()
    assert a.far_reach is not None and len(a.far_reach.bands) == 2
    rng = np.random.default_rng(2)
    for _ in range(3):
        p = a.ask()
        restart = options is RESTART
        seeds = 4 + (N_AFFINE_SEEDS if restart else 0)
        assert p.n_new == 8 + 10 + (seeds * (2 if restart else 1) if p.generation == 0 else 0)
        a.tell(rng.poisson(5.0, (len(p.codes), 1)).astype(float), reference_responses=np.array([[5.0], [6.0]]))
        if p.generation == 0:  # each candidate knows the band that proposed it (-1: main search, seeds)
            assert a.confirmation.family == [-1] * 8 + [0] * 5 + [1] * 5 + [SEED] * seeds
        if restart and p.generation == 0:  # the second showing of each seed is a re-test of its first
            assert a.confirmation.shows[-seeds:] == [2] * seeds and len(a.confirmation.shows) == 18 + seeds
        if restart and p.generation == 1:  # restarted after 2 generations: the bands start at confirmed codes
            codes = a.confirmation.codes.values()
            assert [any(np.array_equal(b.mean, c) for c in codes) for b in a.far_reach.bands] == [True, True]
    b = fresh()
    b.load_state(a.state())
    pa, pb = a.ask(), b.ask()
    assert np.array_equal(pa.codes, pb.codes)
    r = rng.poisson(5.0, (len(pa.codes), 1)).astype(float)
    ra = a.tell(r, reference_responses=np.array([[5.0]]))
    rb = b.tell(r, reference_responses=np.array([[5.0]]))
    assert np.array_equal(ra.fitness, rb.fitness)
    assert all(np.array_equal(x.mean, y.mean) for x, y in zip(a.far_reach.bands, b.far_reach.bands))
    assert a.confirmation.family == b.confirmation.family and a.confirmation.family[-10:] == [0] * 5 + [1] * 5
    assert np.array_equal(a.ask().codes, b.ask().codes)


@pytest.mark.parametrize("options", [NO_RESTART, RESTART], ids=["no-restart", "restart"])
def test_stored_invariance_session_with_far_reach_replays_bit_for_bit(repo, options):
    rec = DatabaseRecorder(repo)
    result = run_probe(parse_config(INVARIANCE | options), recorder=rec)
    rec.finish()
    sid = rec.sessions[-1][1]
    assert result.probe.search.far_reach is not None
    rep = replay(repo, sid)
    assert rep.identical and rep.generations == len(result.probe.reports)
    for x, y in zip(rep.reports, result.probe.reports):
        assert np.array_equal(x.fitness, y.fitness)


@pytest.mark.parametrize("field,value", [("far_reach", -1), ("far_population", 1), ("far_sigma0", 0),
                                         ("far_restart", -1), ("far_seed_repeats", 0)])
def test_bad_far_reach_settings_name_the_field(field, value):
    with pytest.raises(ConfigError) as e:
        parse_config(INVARIANCE | {field: value})
    assert field in str(e.value) and "\n" not in str(e.value)
