"""The sample-efficiency benchmark's ground truth and machinery (bench/sample_efficiency.py).

Exact fronts are checked against brute-force sampling of the full code space (no sampled code may beat the
front) and against closed forms for the complex cell; the harness against its budget rules; the paired
statistics against known values; front confirmation against planted impostors.
"""

from __future__ import annotations


import numpy as np
import pytest
from scipy.integrate import quad

from server.engine.confirm import FrontConfirmation

from bench.sefficiency import stats
from bench.sefficiency.fronts import (
    DEFAULT_CELLS,
    build_instances,
    hypervolume_max,
    make_instance,
    nondominated_max,
    to_max,
)
from bench.sefficiency.harness import run
from bench.sefficiency.methods import REFERENCE_SHOWS, RandomSearch, ReferenceSnS
from bench.sefficiency.neurons import C50, UNITS, naka_rushton
from bench.sefficiency.zspace import Space


@pytest.fixture(scope="module")
def space():
    return Space(side=32, radius=32.0)  # n = 1024: same maths, fast


@pytest.fixture(scope="module")
def units(space):
    return {name: cls(space) for name, cls in UNITS.items()}


def _drive_inverse(lam):
    y = np.clip((np.asarray(lam) - 2.0) / 100.0, 0.0, 1.0 - 1e-15)
    return C50 * np.sqrt(y / (1.0 - y))


# ------------------------------------------------------------------------------------------- hypervolume
def test_hypervolume_of_a_staircase():
    pts = np.array([[1.0, 0.2], [0.5, 0.6], [0.2, 1.0], [0.4, 0.4]])  # the last one is dominated
    assert hypervolume_max(pts) == pytest.approx(1.0 * 0.2 + 0.5 * 0.4 + 0.2 * 0.4)
    assert hypervolume_max(np.array([[0.5, -0.1]])) == 0.0  # outside the reference box adds nothing


def test_nondominated_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    P = np.round(rng.random((300, 2)), 2)  # ties on purpose
    mask = nondominated_max(P)
    dominated = np.array([np.any((P >= p).all(1) & (P > p).any(1)) for p in P])
    np.testing.assert_array_equal(mask, ~dominated)
    assert hypervolume_max(P[mask]) == pytest.approx(hypervolume_max(P))


# ------------------------------------------------------------------------------------------- the units
def test_units_reach_their_mei_rate_and_span_is_orthonormal(units, space):
    for unit in units.values():
        np.testing.assert_allclose(unit.Q @ unit.Q.T, np.eye(unit.k), atol=1e-10)
        z = space.radius * (unit.Q.T @ unit.mei_coords())
        assert unit.rate(z[None])[0] == pytest.approx(naka_rushton(1.0))
        assert unit.rate(np.zeros((1, space.n)))[0] == pytest.approx(2.0)


def test_complex_cell_is_phase_invariant_and_the_simple_cell_is_not(units, space):
    rng = np.random.default_rng(1)
    z = space.project(rng.standard_normal((5, space.n)) + 3 * space.radius * units["complex"].Q[0])
    np.testing.assert_allclose(units["complex"].rate(z), units["complex"].rate(-z))
    zs = space.radius * units["simple"].Q[0]
    assert units["simple"].rate(zs[None])[0] > 80 and units["simple"].rate(-zs[None])[0] == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------- exact fronts
def _brute_force_codes(inst, rng, count=3000):
    """Codes that probe the front: around the reference at many scales, in and near the filter span."""
    sp, Q, R = inst.space, inst.unit.Q, inst.space.radius
    out = []
    for sigma in (0.05, 0.2, 0.5, 1.0, 2.0):
        out.append(inst.z_ref + sigma * rng.standard_normal((count // 10, sp.n)))
    C = rng.standard_normal((count // 2, inst.unit.k))
    C *= (rng.random((len(C), 1)) ** 0.5) / np.linalg.norm(C, axis=1, keepdims=True)
    b = rng.standard_normal((len(C), sp.n))
    b -= (b @ Q.T) @ Q
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    ortho = rng.random((len(C), 1)) * np.sqrt(np.clip(1 - (C**2).sum(1, keepdims=True), 0, None))
    out.append(R * (C @ Q + ortho * b))
    # the far side: orthogonal part of the reference reversed, span part scanned
    ref_b = inst.z_ref - (inst.z_ref @ Q.T) @ Q
    if np.linalg.norm(ref_b) > 0:
        e = -ref_b / np.linalg.norm(ref_b)
        C2 = C[: count // 5]
        out.append(R * (C2 @ Q + np.sqrt(np.clip(1 - (C2**2).sum(1, keepdims=True), 0, None)) * e))
    return sp.project(np.concatenate(out))


@pytest.mark.parametrize("cell", DEFAULT_CELLS + [("complex", "invariance", "mei"), ("mixed", "invariance", "partial"),
                                                  ("simple", "invariance", "mei")])
def test_no_sampled_code_beats_the_exact_front(units, cell):
    unit_name, probe, ref = cell
    inst = make_instance(units[unit_name], probe, ref, res=500)
    rng = np.random.default_rng(abs(hash(cell)) % 2**32)
    f1, f2 = inst.objectives(_brute_force_codes(inst, rng))
    front = to_max(inst.front.f1, inst.front.f2, probe)
    pts = to_max(f1, f2, probe)
    # a sample beats the front if some front-free margin around it is not dominated by any front point
    tol = 3e-3
    beaten = [not np.any((front[:, 0] >= p[0] - tol) & (front[:, 1] >= p[1] - tol)) for p in pts]
    assert not any(beaten), f"{sum(beaten)} samples beat the exact front of {inst.name}"
    # and the samples get close to it somewhere (the test is not vacuous)
    assert inst.hv(f1, f2) > 0.5 * inst.front.hv
    assert inst.hv(f1, f2) <= inst.front.hv + 2e-3


def test_complex_cell_with_its_mei_closed_forms(units):
    inv = make_instance(units["complex"], "invariance", "mei", res=400)
    assert inv.front.hv == pytest.approx(1.0)  # one point: the contrast-inverted image at full stretch
    adv = make_instance(units["complex"], "adversarial", "mei", res=400)
    lam_ref = naka_rushton(1.0)
    dmax = (lam_ref - 2.0) / lam_ref

    def one_minus_least_f1(delta):
        rho = np.sqrt(_drive_inverse(lam_ref * (1 - delta)))  # contrast reduction to this response
        return 1.0 - (1.0 - rho) / 2.0

    exact = quad(one_minus_least_f1, 0.0, dmax, limit=200)[0]
    assert adv.front.hv == pytest.approx(exact, abs=2e-4)


def test_complex_cell_with_a_partial_reference_closed_form(units):
    inst = make_instance(units["complex"], "invariance", "partial", res=400)
    rho_r, beta = 0.6, 0.5
    lam_r = naka_rushton(rho_r**2)
    d_max = 1.0 + np.hypot(rho_r, beta)
    rho_star = rho_r / np.hypot(rho_r, beta)

    def best_f1(eps):
        lo = np.sqrt(_drive_inverse(lam_r * (1 - eps)))
        hi = min(1.0, np.sqrt(_drive_inverse(lam_r * (1 + eps))))
        rho = np.clip(rho_star, lo, hi)
        return np.sqrt((rho + rho_r) ** 2 + (beta + np.sqrt(1 - rho**2)) ** 2) / d_max

    exact = quad(best_f1, 0.0, 1.0, limit=200)[0]
    assert inst.front.hv == pytest.approx(exact, abs=2e-4)


# ------------------------------------------------------------------------------------------- the harness
@pytest.fixture(scope="module")
def instances(space):
    cells = [("mixed", "invariance", "mei"), ("complex", "adversarial", "mei")]
    return build_instances(space, cells, res=200)


def test_budget_counts_every_presentation_and_seeds_pair_the_noise(instances):
    inst = instances[0]
    a = run(RandomSearch(inst, 0.05, seed=3, sigma=0.5), inst, 0.05, 3, checkpoints=(300, 1000))
    per_gen = 50 + REFERENCE_SHOWS
    assert [c.presentations for c in a.checkpoints] == [per_gen * (300 // per_gen), per_gen * (1000 // per_gen)]
    assert a.generations == 1000 // per_gen
    b = run(RandomSearch(inst, 0.05, seed=3, sigma=0.5), inst, 0.05, 3, checkpoints=(300, 1000))
    assert [c.hv_reported for c in a.checkpoints] == [c.hv_reported for c in b.checkpoints]
    for c in a.checkpoints:
        assert 0.0 < c.hv_reported <= c.hv_found <= 1.0 + 1e-9


def test_reference_scheme_early_stop_freezes_its_scores(instances):
    inst = instances[1]  # adversarial: the published stopping rule applies
    m = ReferenceSnS(inst, 0.2, seed=0, optimizer="sepcma")
    m.stopper.threshold = -1.0  # everything responds above the "natural minimum": never stops
    res = run(m, inst, 0.2, 0, checkpoints=(400,))
    assert not res.stopped_early
    m = ReferenceSnS(inst, 0.2, seed=0, optimizer="sepcma")
    m.stopper.threshold = 1e9  # nothing responds above it: stops at generation 5
    res = run(m, inst, 0.2, 0, checkpoints=(600, 1200))
    assert res.stopped_early and res.generations == 6
    assert res.checkpoints[0].hv_found == res.checkpoints[1].hv_found


def test_snslab_adapter_reports_presented_candidates(instances):
    from bench.sefficiency.snslab import SnSLab

    inst = instances[0]
    m = SnSLab(inst, 0.2, seed=1, popsize=10, retests=4)
    res = run(m, inst, 0.2, 1, checkpoints=(400,))
    front, sel = m.report()
    # 10 new + 10 far-reach + 4 re-tests + 4 refs a generation, + 3 x 41 seed showings in the first
    assert res.generations >= 5 and len(front) >= 1
    assert front.max() < res.checkpoints[0].presentations and sel in set(front.tolist())


# ------------------------------------------------------------------------------------------- statistics
def test_holm_and_one_sided_wilcoxon():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    a = np.arange(12, dtype=float) + 1.0
    assert stats.paired_greater(a, np.zeros(12)) == pytest.approx(2.0**-12)
    assert stats.paired_greater(np.zeros(12), a) > 0.99


def _record(method, seed, hv, budgets=(1000, 3000, 10000), cell="mixed/invariance/mei", window=0.2):
    cps = [{"budget": b, "presentations": b, "hv_found": hv * (1 + b / 1e4), "hv_reported": hv * (1 + b / 1e4),
            "retention": 1.0, "stretch": 0.5, "f1_sel": 0.5, "f2_sel": 0.0} for b in budgets]
    return {"method": method, "instance": cell, "window_s": window, "seed": seed, "checkpoints": cps,
            "opt_seconds_per_generation": 0.01}


def test_claims_pair_each_budget_on_the_seeds_both_sides_reached():
    """A slow comparator that reached 10k on 2 of 6 seeds: 3k claims use 6 pairs, the 10k claim 2."""
    records = []
    for seed in range(6):
        records.append(_record("snslab", seed, 0.6 + 0.01 * seed))
        records.append(_record("random-1", seed, 0.1))
        reach = (1000, 3000, 10000) if seed >= 4 else (1000, 3000)
        records.append(_record("reference", seed, 0.2 - 0.01 * seed, budgets=reach))
    (row,) = stats.claims(stats.Results(records), "reference")
    assert (row["gate_budget"], row["gate_n"]) == (3000, 6)
    assert (row["win_budget"], row["win_n"]) == (3000, 6)
    assert (row["worse_budget"], row["worse_n"]) == (10000, 2)
    assert row["win_ratio_median"] == pytest.approx(np.median([(0.6 + 0.01 * s) / (0.2 - 0.01 * s) for s in range(6)]))
    assert row["worse_median_diff"] == pytest.approx(np.median([2.0 * (0.4 + 0.02 * s) for s in (4, 5)]))
    assert row["better_p"] == pytest.approx(0.25) and row["worse_p"] == pytest.approx(1.0)  # 2 pairs: at best 1/4
    table = stats.claims_markdown([{**row, **{k + "_holm": row[k] for k in ("gate_p", "win_p", "worse_p", "better_p")}}],
                                  "reference")
    assert "| pairs at 10000 |" in table and "| 2 | +0." in table
    ref_row = next(line for line in stats.markdown(stats.Results(records), "reference").splitlines()
                   if "| reference |" in line)
    assert ref_row.count("(n=2)") == 4 and "0.31±0.01 (n=2)" in ref_row  # found/reported 10k, retention, stretch


# ------------------------------------------------------------------------------------------- confirmation
def test_confirmation_rejects_lucky_counts_among_silent_neighbours():
    rng = np.random.default_rng(0)
    T, ref_rate = 0.05, 40.0
    fc = FrontConfirmation("invariance", retests=5, kappa=1.0)
    for _ in range(30):
        fc.add_reference(rng.poisson(ref_rate * T, 4) / T)
    assert fc.dispersion == pytest.approx(1 / T, rel=0.35)
    # a generation of far, silent images (true 2 Hz): one of them gets a lucky count near the reference
    true = np.full(40, 2.0)
    counts = rng.poisson(true * T)
    counts[0] = 2  # 40 Hz measured: looks perfect
    far = np.full(40, 10.0)
    fc.add(np.zeros((40, 3)), far, counts / T)
    # a generation of near, genuinely responsive images (true 40 Hz)
    near = np.full(40, 3.0)
    fc.add(np.zeros((40, 3)), near, rng.poisson(ref_rate * T, 40) / T)
    squeeze = -fc.objectives("conservative")[:, 1]  # conservative |r - r_ref|
    assert squeeze[0] > 0.5 * ref_rate  # the impostor is claimed only as far from the reference's response
    assert squeeze[40:].min() < 0.2 * ref_rate  # the responsive images are claimed as close to it
    plain = FrontConfirmation("invariance", retests=5, shrink=False)
    plain.ref_sum, plain.ref_n = fc.ref_sum, fc.ref_n
    plain._ref_var_sum, plain._ref_var_dof = fc._ref_var_sum, fc._ref_var_dof
    plain.add(np.zeros((40, 3)), far, counts / T)
    ids, codes = plain.choose_retests()
    assert 0 in ids and codes.shape == (len(ids), 3)  # without shrinkage, the impostor is what gets re-tested
