"""Ask/tell optimizers: convergence on known functions, determinism, snapshots resumed in a new process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server.engine.base import ConfigError
from server.engine.optimizers import (
    DEFAULT_OPTIMIZER,
    OPTIMIZERS,
    GeneticOptimizer,
    Optimizer,
    SepCMAOptimizer,
    make_optimizer,
)

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "optimizer_resume_child.py"
_spec = importlib.util.spec_from_file_location("optimizer_resume_child", CHILD)
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)

NAMES = sorted(OPTIMIZERS)
CMA_NAMES = ["cma", "sepcma"]


def sphere_to(centre):
    return lambda codes: -np.sum((codes - centre) ** 2, axis=1)


def run(opt, fitness, generations):
    """ask/tell ``generations`` times; returns the asked codes (G, popsize, n) and their fitness (G, popsize)."""
    asked, scores = [], []
    for _ in range(generations):
        codes = opt.ask()
        f = fitness(codes)
        opt.tell(codes, f)
        asked.append(codes)
        scores.append(f)
    return np.stack(asked), np.stack(scores)


# -- registry and construction ---------------------------------------------------------------------


def test_registry_and_default():
    assert set(OPTIMIZERS) == {"sepcma", "cma", "genetic", "shell"}  # shell: server.engine.adversarial
    assert DEFAULT_OPTIMIZER == "sepcma"
    for name in NAMES:
        opt = make_optimizer(name, np.zeros(12), 0.5, 8, 3)
        assert opt.name == name and isinstance(opt, OPTIMIZERS[name])
        codes = opt.ask()
        assert codes.shape == (8, 12) and codes.dtype == np.float64
        assert opt.mean.shape == (12,) and opt.sigma == 0.5 and opt.generation == 0


def test_unknown_name_and_option_are_config_errors():
    with pytest.raises(ConfigError) as err:
        make_optimizer("adam", np.zeros(4), 1.0, 8, 0)
    assert err.value.field == "optimizer"
    assert "cma, genetic, sepcma" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_optimizer("genetic", np.zeros(4), 1.0, 8, 0, mutation=0.1)
    assert err.value.field == "optimizer" and "mutation_rate" in str(err.value)
    with pytest.raises(ConfigError, match="no options"):
        make_optimizer("sepcma", np.zeros(4), 1.0, 8, 0, temperature=1.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"x0": np.zeros((2, 3))}, "x0"),
        ({"x0": np.array([0.0, np.nan])}, "x0"),
        ({"sigma0": 0.0}, "sigma0"),
        ({"sigma0": float("inf")}, "sigma0"),
        ({"popsize": 1}, "popsize"),
        ({"seed": -1}, "seed"),
        ({"n_elite": 8}, "n_elite"),
        ({"mutation_rate": 1.5}, "mutation_rate"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_construction_values_name_the_field(kwargs, field):
    args = {"x0": np.zeros(4), "sigma0": 1.0, "popsize": 8, "seed": 0} | kwargs
    with pytest.raises(ConfigError) as err:
        GeneticOptimizer(**args)
    assert err.value.field == field and "allowed" in str(err.value)


# -- convergence on known functions -----------------------------------------------------------------


@pytest.mark.parametrize("name", CMA_NAMES)
@pytest.mark.parametrize("weighted", [False, True], ids=["sphere", "ellipsoid"])
def test_cma_finds_the_maximum(name, weighted):
    """Mean within 1e-6 of the maximiser of a 10-d quadratic in at most 300 generations (from 3+ away)."""
    n = 10
    if weighted:
        fitness, centre = child.fitness, np.linspace(-1.0, 2.0, n)
    else:
        centre = np.linspace(-2.0, 2.0, n)
        fitness = sphere_to(centre)
    opt = make_optimizer(name, np.zeros(n), 1.0, 20, seed=4)
    for _ in range(300):
        codes = opt.ask()
        opt.tell(codes, fitness(codes))
        if np.abs(opt.mean - centre).max() < 1e-6:
            break
    assert np.abs(opt.mean - centre).max() < 1e-6, (opt.generation, opt.mean - centre)
    assert opt.sigma < 1e-2  # the step size shrank 100-fold or more


def test_genetic_finds_the_maximum_and_keeps_its_elites():
    """The best code comes within 0.3 of the maximiser (start: 4.1 away) in 150 generations; elites persist."""
    n = 10
    centre = np.linspace(-2.0, 2.0, n)
    opt = make_optimizer("genetic", np.zeros(n), 1.0, 50, seed=2)
    codes, scores = run(opt, sphere_to(centre), 150)
    best = codes[-1][np.argmax(scores[-1])]
    assert np.linalg.norm(best - centre) < 0.3
    assert np.linalg.norm(codes[0] - centre, axis=1).min() > 2.0
    # elitism: the best score never drops, and the 2 best codes are asked again unchanged
    assert np.all(np.diff(scores.max(axis=1)) >= 0)
    for g in range(1, 150):
        top2 = codes[g - 1][np.argsort(-scores[g - 1], kind="stable")[:2]]
        assert np.array_equal(codes[g][:2], top2)


def test_genetic_mutates_about_the_stated_fraction_of_genes():
    """With one parent per child and no elites, a child differs from its parent in ~30% of genes by ~N(0, 0.3^2)."""
    n, pop = 64, 50
    opt = GeneticOptimizer(np.zeros(n), 1.0, pop, seed=5, n_elite=0, n_parents=1)
    opt.ask()
    parents = np.arange(pop, dtype=np.float64)[:, None] * 1000.0 + np.zeros((pop, n))  # genes name their parent
    opt.tell(parents, np.zeros(pop))  # equal fitness: uniform parent choice
    children = opt.ask()
    delta = children - np.round(children / 1000.0) * 1000.0
    changed = delta != 0
    assert 0.25 < changed.mean() < 0.35
    assert 0.25 < delta[changed].std() < 0.35


def test_genetic_parent_choice_ignores_the_fitness_scale():
    opt = GeneticOptimizer(np.zeros(4), 1.0, 5, seed=0)
    f = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    p = opt.parent_probabilities(f)
    assert np.allclose(p, opt.parent_probabilities(1e6 * f - 42.0))
    assert np.all(np.diff(p) > 0) and np.isclose(p.sum(), 1.0)
    assert np.allclose(opt.parent_probabilities(np.full(5, 7.0)), 0.2)
    hot = GeneticOptimizer(np.zeros(4), 1.0, 5, seed=0, temperature=100.0).parent_probabilities(f)
    assert hot.max() - hot.min() < p.max() - p.min()


# -- repaired codes ---------------------------------------------------------------------------------


def project_to_ball(codes, radius):
    norms = np.linalg.norm(codes, axis=1, keepdims=True)
    return codes * np.minimum(1.0, radius / np.maximum(norms, 1e-300))


@pytest.mark.parametrize("name, tolerance", [("sepcma", 0.01), ("cma", 0.01), ("genetic", 0.3)])
def test_tell_with_projected_codes_finds_the_constrained_maximum(name, tolerance):
    """Maximiser outside a ball of radius 1: the projected search converges to its projection on the sphere."""
    n = 10
    centre = np.full(n, 2.0 / np.sqrt(n))  # |centre| = 2
    target = centre / 2.0
    fitness = sphere_to(centre)
    opt = make_optimizer(name, np.zeros(n), 0.5, 20 if name != "genetic" else 50, seed=1)
    for _ in range(200):
        codes = project_to_ball(opt.ask(), 1.0)
        f = fitness(codes)
        opt.tell(codes, f)
    best = codes[np.argmax(f)]
    assert np.linalg.norm(best) <= 1.0 + 1e-12
    assert np.linalg.norm(best - target) < tolerance


# -- bad input to tell --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_bad_tell_is_a_one_line_error_and_keeps_the_generation_pending(name):
    opt = make_optimizer(name, np.zeros(6), 1.0, 8, seed=0)
    codes = opt.ask()
    good = -np.sum(codes**2, axis=1)
    cases = [
        (codes, np.where(np.arange(8) == 3, np.nan, good), "fitness", "NaN"),
        (codes, np.where(np.arange(8) == 3, np.inf, good), "fitness", "finite"),
        (codes, good[:7], "fitness", "shape (8,)"),
        (codes, good[:, None], "fitness", "shape (8,)"),
        (codes[:7], good, "codes", "shape (8, 6)"),
        (codes[:, :5], good, "codes", "shape (8, 6)"),
        (np.where(codes > 0, np.nan, codes), good, "codes", "finite"),
    ]
    for bad_codes, bad_fitness, field, words in cases:
        with pytest.raises(ValueError) as err:
            opt.tell(bad_codes, bad_fitness)
        msg = str(err.value)
        assert msg.startswith(f"{field}: ") and words in msg and "\n" not in msg, msg
    assert np.array_equal(opt.pending, codes) and opt.generation == 0
    opt.tell(codes, good)
    assert opt.generation == 1 and opt.pending is None


@pytest.mark.parametrize("name", NAMES)
def test_ask_and_tell_must_alternate(name):
    opt = make_optimizer(name, np.zeros(6), 1.0, 8, seed=0)
    with pytest.raises(RuntimeError, match="no pending ask"):
        opt.tell(np.zeros((8, 6)), np.zeros(8))
    opt.ask()
    with pytest.raises(RuntimeError, match="already asked"):
        opt.ask()


# -- determinism and snapshots ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_sequence_different_seed_different(name):
    a, _ = run(make_optimizer(name, np.zeros(16), 1.0, 10, seed=7), child.fitness, 20)
    b_opt = make_optimizer(name, np.zeros(16), 1.0, 10, seed=7)
    b = []
    for _ in range(20):  # snapshots taken along the way must not disturb the run
        b_opt.state()
        codes = b_opt.ask()
        b_opt.state()
        b_opt.tell(codes, child.fitness(codes))
        b.append(codes)
    c, _ = run(make_optimizer(name, np.zeros(16), 1.0, 10, seed=8), child.fitness, 20)
    assert np.array_equal(a, np.stack(b))
    assert not np.any(np.all(a == c, axis=(1, 2)))  # every generation differs


@pytest.mark.parametrize("name", NAMES)
def test_numpy_global_random_state_is_neither_used_nor_changed(name):
    results = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        before = np.random.get_state()[1].copy()
        codes, _ = run(make_optimizer(name, np.zeros(16), 1.0, 10, seed=3), child.fitness, 5)
        assert np.array_equal(np.random.get_state()[1], before)
        results.append(codes)
    assert np.array_equal(results[0], results[1])


@pytest.mark.parametrize("name", NAMES)
def test_restore_in_process_continues_the_same_run(name):
    opt = make_optimizer(name, np.zeros(16), 1.0, 10, seed=11)
    run(opt, child.fitness, 5)
    pending = opt.ask()
    copy = Optimizer.restore(opt.state())
    assert type(copy) is type(opt) and copy.generation == 5
    assert np.array_equal(copy.pending, pending)
    assert np.array_equal(copy.mean, opt.mean) and copy.sigma == opt.sigma
    for o in (opt, copy):
        o.tell(pending, child.fitness(pending))
    a, _ = run(opt, child.fitness, 5)
    b, _ = run(copy, child.fitness, 5)
    assert np.array_equal(a, b)


def test_restore_rejects_foreign_bytes_and_the_wrong_subclass():
    with pytest.raises(ConfigError) as err:
        Optimizer.restore(b"not a pickle")
    assert err.value.field == "state"
    genetic = make_optimizer("genetic", np.zeros(4), 1.0, 8, seed=0).state()
    with pytest.raises(ConfigError, match="snapshot of 'genetic'"):
        SepCMAOptimizer.restore(genetic)
    assert isinstance(GeneticOptimizer.restore(genetic), GeneticOptimizer)


FIRST, TOTAL = 7, 20  # snapshot after generation FIRST, compare the asks up to generation TOTAL


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Snapshots of every optimizer (after a tell, and between ask and tell), continued in ONE new process.

    Returns {(name, pending): (uninterrupted continuation, continuation from the child process)}.
    """
    tmp = tmp_path_factory.mktemp("resume")
    expected, args = {}, []
    for name in NAMES:
        for pending in (False, True):
            opt = make_optimizer(name, np.zeros(24), 1.0, 12, seed=123)
            run(opt, child.fitness, FIRST)
            if pending:
                opt.ask()
            state_file = tmp / f"{name}-{pending}.state"
            state_file.write_bytes(opt.state())
            expected[name, pending] = child.continue_run(opt, TOTAL - FIRST)
            args += [str(state_file), str(tmp / f"{name}-{pending}.npz")]
    env = dict(os.environ, PYTHONHASHSEED="12345")  # pycma keys its archive by hash(bytes): salt differs
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, str(CHILD), str(TOTAL - FIRST), *args], check=True, env=env, timeout=120)
    return {key: (value, dict(np.load(tmp / f"{key[0]}-{key[1]}.npz"))) for key, value in expected.items()}


@pytest.mark.parametrize("pending", [False, True], ids=["after-tell", "between-ask-and-tell"])
@pytest.mark.parametrize("name", NAMES)
def test_resume_in_a_new_process_is_bit_for_bit(resumed, name, pending):
    here, there = resumed[name, pending]
    assert there["codes"].shape == (TOTAL - FIRST, 12, 24)
    assert np.array_equal(here["codes"], there["codes"])
    assert np.array_equal(here["mean"], there["mean"])
    assert here["sigma"] == there["sigma"] and int(there["generation"]) == TOTAL + pending
    if pending:
        assert bool(there["pending_known"])  # pycma still recognises its own asked codes
    # and the run actually moved: later generations differ from the snapshot's
    assert not np.array_equal(there["codes"][0], there["codes"][-1])


def test_cma_tells_projected_codes_without_warnings():
    """pycma's TPA step-size rule (n >= 300) warns when a repair breaks its mirrored pair: silenced."""
    import warnings

    opt = make_optimizer("cma", np.zeros(320), 0.5, 10, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            codes = project_to_ball(opt.ask(), 1.0)
            opt.tell(codes, -np.sum((codes - 0.2) ** 2, axis=1))
    assert opt.generation == 3
