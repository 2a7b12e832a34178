"""Pareto ranking against an independent oracle (pymoo) and the reference's within-front rules."""

import numpy as np
import pytest
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from server.engine.pareto import (
    crowding_distance,
    first_front,
    newest_of_global_front,
    nondominated_sort,
    scalar_fitness,
    within_front_key,
)


def _oracle_fronts(F: np.ndarray) -> np.ndarray:
    """pymoo minimises; it returns a list of index arrays, one per front."""
    G = -F
    G = np.where(np.isinf(G), 1e300, G)  # pymoo's epsilon arithmetic cannot take inf; same order
    out = np.empty(len(F), dtype=int)
    for k, idx in enumerate(NonDominatedSorting().do(G)):
        out[idx] = k
    return out


def _population(rng, n, m):
    kind = rng.integers(3)
    if kind == 0:
        F = rng.normal(size=(n, m))
    elif kind == 1:  # heavy ties: few distinct values
        F = rng.integers(0, 4, size=(n, m)).astype(float)
    else:  # duplicates and infinities (bound violators)
        F = rng.normal(size=(n, m)).round(1)
        F[rng.random(n) < 0.2] = -np.inf
        dup = rng.integers(0, n, size=n // 4)
        F[rng.integers(0, n, size=n // 4)] = F[dup]
    return F


@pytest.mark.parametrize("m", [2, 3])
def test_nondominated_sort_matches_pymoo_on_many_random_populations(m):
    rng = np.random.default_rng(1234 + m)
    for _ in range(300):
        F = _population(rng, int(rng.integers(1, 80)), m)
        assert np.array_equal(nondominated_sort(F), _oracle_fronts(F)), F


def test_first_front_2d_matches_dominance_matrix_on_large_history():
    rng = np.random.default_rng(7)
    F = rng.normal(size=(5000, 2)).round(2)  # ties on both axes
    F[::50] = -np.inf
    slow = ~(((F[:, None] >= F[None]).all(-1) & (F[:, None] > F[None]).any(-1)).any(0))
    assert np.array_equal(first_front(F), slow)


def test_bound_violators_rank_last_and_nan_is_rejected():
    F = np.array([[1.0, 1.0], [-np.inf, -np.inf], [0.0, 0.0]])
    assert nondominated_sort(F).tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="objectives: contain NaN"):
        nondominated_sort(np.array([[np.nan, 1.0]]))


def test_crowding_is_assigned_per_individual_not_by_sorted_position():
    # One front, deliberately shuffled so sorted position != row index.
    F = np.array([[3.0, 0.0], [0.0, 3.0], [2.0, 1.0], [1.0, 2.5]])
    fronts = nondominated_sort(F)
    assert (fronts == 0).all()
    c = crowding_distance(F, fronts)
    assert np.isinf(c[0]) and np.isinf(c[1])
    # row 2 (2,1): neighbours on f0 are 1 and 3 -> 2/3; on f1 are 0 and 2.5 -> 2.5/3
    assert c[2] == pytest.approx(2 / 3 + 2.5 / 3)
    # row 3 (1,2.5): neighbours on f0 are 0 and 2 -> 2/3; on f1 are 1 and 3 -> 2/3
    assert c[3] == pytest.approx(2 / 3 + 2 / 3)


def test_onevar_prefers_smallest_squeezed_distance_within_a_front_and_fronts_first():
    # Invariance: objectives (+d_pix, -d_unit). Front 0 = rows 0,1; row 2 dominated by row 1.
    F = np.array([[5.0, -2.0], [3.0, -0.5], [2.0, -1.0], [1.0, 0.0]])
    fronts = nondominated_sort(F)
    assert fronts.tolist() == [0, 0, 1, 0]
    h = within_front_key("onevar", F, fronts, squeeze_high=True, high_column=1)
    s = scalar_fitness(fronts, h)
    # d_unit = 0 is guarded (no inf) and is the best of front 0
    assert np.all(np.isfinite(s))
    assert np.argsort(-s).tolist() == [3, 1, 0, 2]
    # adversarial onevar prefers the largest |S_high|
    h_adv = within_front_key("onevar", F, fronts, squeeze_high=False, high_column=1)
    s_adv = scalar_fitness(fronts, h_adv)
    assert np.argsort(-s_adv)[:3].tolist() == [0, 1, 3]


def test_reference_fitness_formula():
    fronts = np.array([0, 1, 0, 2])
    h = np.array([0.5, 0.2, 0.1, 0.9])
    # F = 2, p = F + 1 - f = [3, 2, 3, 1]; s = (p + 1)(max h + 1) + h
    assert scalar_fitness(fronts, h) == pytest.approx([4 * 1.9 + 0.5, 3 * 1.9 + 0.2, 4 * 1.9 + 0.1, 2 * 1.9 + 0.9])


def test_random_order_is_seeded():
    F = np.zeros((6, 2))
    fr = nondominated_sort(F)
    a = within_front_key("random", F, fr, True, 1, np.random.default_rng(3))
    b = within_front_key("random", F, fr, True, 1, np.random.default_rng(3))
    assert np.array_equal(a, b) and len(set(a)) == 6


def test_selection_is_newest_member_of_global_front():
    F = np.array([[1.0, -1.0], [2.0, -2.0], [1.5, -1.0], [0.5, -0.5], [0.1, -3.0]])
    gen = np.array([0, 0, 1, 1, 2])
    fitness = np.array([1.0, 2.0, 3.0, 4.0, 9.0])
    # global front: rows 1 (2,-2), 2 (1.5,-1), 3 (0.5,-0.5); row 4 is dominated; newest = gen 1 -> rows 2,3
    assert newest_of_global_front(F, gen, fitness) == 3
