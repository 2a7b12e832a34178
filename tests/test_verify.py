"""The reported image's verification (server/engine/verify.py): floor, race, galloping, budget, fallback.

Candidates are given true rates; ``measure`` draws Poisson counts in a window of ``T`` seconds, so the
tests know which candidates truly keep (or change) the response and check what the race picks.
"""

from __future__ import annotations

import numpy as np
import pytest

from server.engine.verify import Race, doubling_looks

T = 1.0
REF = 50.0
PHI = 1.0 / T  # Poisson counts in a window T: var(rate) = rate / T


def measurer(true_rates: dict[int, float], seed: int = 0):
    calls: list[tuple[int, int, int]] = []

    def measure(cid: int, first: int, n: int) -> np.ndarray:
        calls.append((cid, first, n))
        rng = np.random.default_rng([seed, cid, first])
        return rng.poisson(true_rates[cid] * T, size=n) / T
    return measure, calls


def race(mode="invariance"):
    # a precisely known reference (as after a long probe): its error is not what these tests are about
    return Race(mode, reference_rate=REF, reference_se=0.5, dispersion=PHI, tolerance=0.1, target_change=0.5)


def test_racers_are_tested_in_turn_then_with_doubling_gaps_and_looks_double():
    ladder = list(range(100))
    measure, _ = measurer({i: 0.5 * REF for i in ladder})  # every one fails at its first look
    v = race().run([], lambda floor: ladder, measure, budget=10_000, looks=(8, 16, 32, 64), pass_after=32,
                   consecutive=12)
    assert [r.cid for r in v.rungs] == [*range(12), 12, 14, 18, 26, 42, 74]
    assert all(r.shows == 8 and r.verdict == "failed" for r in v.rungs)
    assert doubling_looks(128) == (8, 16, 32, 64, 128)
    assert doubling_looks(8) == (2, 4, 8)


def test_a_band_whose_candidates_do_not_pass_is_skipped_after_two_strikes():
    # the top of the list: 30 look-alikes from far-reach band 1 at 85% of the reference (band edge, outside
    # the +-10% band), then band 0's in-band candidates: the race reaches them after two strikes of band 1
    ladder = list(range(40))
    rates = {i: (0.85 if i < 30 else 0.99) * REF for i in ladder}
    measure, _ = measurer(rates)
    v = race().run([], lambda floor: ladder, measure, budget=384, looks=(8, 16, 32, 64), pass_after=32,
                   lineage=lambda cid: 1 if cid < 30 else 0)
    assert [r.cid for r in v.rungs][:2] == [0, 1] and v.rungs[2].cid == 30
    assert v.chosen.cid == 30 and v.chosen.verdict == "passed"
    # without families the same budget ends among the look-alikes
    v = race().run([], lambda floor: ladder, measure, budget=384, looks=(8, 16, 32, 64), pass_after=32)
    assert v.chosen.cid < 30 and v.chosen.verdict != "passed"


def test_lineages_are_bands_and_main_search_generations_and_seeds_stand_alone():
    from server.engine.confirm import SEED, FrontConfirmation
    from server.engine.verify import lineages

    conf = FrontConfirmation("invariance")
    conf.add_reference(np.array([50.0, 52.0]))
    where = []
    for gen, groups in enumerate([[(-1, 3), (0, 2), (SEED, 2)], [(-1, 3), (1, 2)]]):
        for family, n in groups:
            conf.add(np.zeros((n, 4)), np.ones(n), np.full(n, 50.0), family=family)
        where += [(gen, i) for i in range(sum(n for _, n in groups))]
    lineage = lineages(conf, where)
    assert [lineage(c) for c in range(len(where))] == [("generation", 0)] * 3 + [("band", 0)] * 2 + [None] * 2 \
        + [("generation", 1)] * 3 + [("band", 1)] * 2


def test_a_floor_that_did_not_pass_strikes_its_lineage_and_is_not_raced_again():
    # floors 0 and 1 (generation "a", at 1.25x: they fail), racers 0-9 of "a" and 10-19 of "b" (in the band)
    ladder = list(range(20))
    rates = {i: (1.25 if i < 10 else 1.0) * REF for i in ladder}
    measure, calls = measurer(rates)
    v = race().run([0, 1], lambda floor: ladder, measure, budget=768, looks=(8, 16, 32, 64, 128), pass_after=128,
                   lineage=lambda cid: "a" if cid < 10 else "b")
    assert [r.role for r in v.rungs][:2] == ["floor", "floor"] and v.rungs[2].cid == 10
    assert v.chosen.cid == 10 and v.chosen.verdict == "passed" and v.chosen.shows == 128
    assert len({c for c, _, _ in calls}) == 3  # each candidate measured under one role only


def test_invariance_picks_the_farthest_candidate_that_truly_keeps_the_response():
    # ladder best (farthest) first: two far impostors (60% and 140% of the reference), then in-band ones
    rates = {0: 0.6 * REF, 1: 1.4 * REF, 2: 1.0 * REF, 3: 0.98 * REF, 4: 1.01 * REF}
    measure, calls = measurer(rates)
    v = race().run([], lambda floor: [0, 1, 2, 3, 4], measure, budget=400, looks=(8, 16, 32, 64), pass_after=32)
    assert v.chosen is not None and v.chosen.cid == 2 and v.chosen.verdict == "passed"
    shows = {r.cid: r.shows for r in v.rungs}
    assert shows[0] == 8 and shows[1] == 8  # impostors fail at the first look: they cost little
    assert shows[2] >= 32  # a pass needs pass_after showings
    assert 3 not in shows and 4 not in shows  # nothing nearer is tested once the farthest passes
    assert v.presentations == sum(n for _, _, n in calls) <= 400


def test_a_floor_from_the_established_candidates_stands_when_every_racer_fails():
    rates = {10: REF, 0: 0.7 * REF, 1: 0.65 * REF, 2: 1.35 * REF}
    measure, _ = measurer(rates)
    asked = []

    def racers(floor):
        asked.append(floor)
        return [0, 1, 2]
    v = race().run([10], racers, measure, budget=400, looks=(8, 16, 32, 64), pass_after=32)
    assert asked == [10]  # the racers are those better than the floor that passed
    assert v.chosen.cid == 10 and v.chosen.role == "floor" and v.chosen.verdict == "passed"
    assert [r.verdict for r in v.rungs[1:]] == ["failed"] * 3


def test_without_floor_the_race_gallops_past_a_long_run_of_impostors():
    # 40 far impostors at 75% of the reference, then in-band ones: testing 12 in turn then doubling gaps
    # reaches rank 42 within the budget (about 170 showings); testing all in turn would need 352
    ladder = list(range(60))
    rates = {i: (0.75 if i < 40 else 1.0) * REF for i in ladder}
    measure, _ = measurer(rates)
    v = race().run([], lambda floor: ladder, measure, budget=250, looks=(8, 16, 32, 64), pass_after=32,
                   consecutive=12)
    assert v.chosen is not None and v.chosen.verdict == "passed" and v.chosen.cid >= 40
    assert v.presentations <= 250


def test_when_nothing_passes_the_choice_is_not_a_failed_candidate():
    # far impostors that fail, then an in-band candidate the budget is too small to establish
    rates = {0: 0.5 * REF, 1: 1.6 * REF, 2: 1.0 * REF}
    measure, _ = measurer(rates, seed=3)
    v = race().run([], lambda floor: [0, 1, 2], measure, budget=24, looks=(8, 16, 32, 64), pass_after=32)
    assert [r.verdict for r in v.rungs][:2] == ["failed", "failed"]
    assert v.chosen.cid == 2 and v.chosen.verdict != "failed"


def test_adversarial_picks_the_nearest_candidate_that_truly_halves_the_response():
    # ladder best (nearest) first: a lucky near image that did not change the response, then halved ones
    rates = {0: 0.95 * REF, 1: 0.3 * REF, 2: 0.2 * REF}
    measure, _ = measurer(rates)
    v = race("adversarial").run([2], lambda floor: [0, 1] if floor == 2 else [], measure, budget=400,
                                looks=(8, 16, 32, 64), pass_after=32)
    assert v.chosen.cid == 1 and v.chosen.verdict == "passed"
    assert {r.cid: r.verdict for r in v.rungs}[0] == "failed"


@pytest.mark.parametrize("mode", ["invariance", "adversarial"])
def test_budget_is_never_exceeded(mode):
    rates = {i: REF * (0.92 if mode == "invariance" else 0.52) for i in range(30)}
    measure, calls = measurer(rates)
    v = race(mode).run(list(range(3)), lambda floor: list(range(3, 30)), measure, budget=100,
                       looks=(8, 16, 32, 64), pass_after=32)
    assert v.presentations == sum(n for _, _, n in calls) <= 100


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        Race("maximize", reference_rate=1.0, reference_se=0.0, dispersion=1.0)
