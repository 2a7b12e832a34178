"""Choosing the reported image from fresh measurements: a floor, then a race down the ladder.

After a probe under noise, the search's own pick is the farthest (invariance) or nearest (adversarial) of
many noisy candidates that pass a noisy test, so its measured rate is biased in its favour (the winner's
curse). Re-measuring a fixed set of candidates a fixed number of times each (the first design: 12 x 32)
had two faults, found on the probe panel (docs/benchmarks.md, bench/probes.py):

- when none of the far candidates passed, the fallback ("the one closest to passing") was a far image
  outside the band (retention 0.83-0.89 or 1.25), although the search had established nearer in-band ones;
- every candidate got the same showings: clear impostors wasted them, and the one that mattered (the
  farthest plausible one, near the band's edge) got too few to be told apart from its neighbours.

Here, within a budget of fresh presentations (``verify_budget``), stopping at the first pass:

1. **Floor**: the search's *established* candidates (conservatively passing on its own measurements),
   best first, are re-measured until one passes on fresh presentations alone; it is the fallback.
2. **Race**: the *plausible* candidates better than the floor (farther for invariance, nearer for the
   adversarial probe), best first: the first ``consecutive`` in turn, then with doubling gaps down the
   list (galloping: a long run of impostors at the top is crossed in a few tests). A *lineage* (a far-reach
   band, or one generation of the main search: ``lineages``) is skipped once ``strikes`` of its candidates
   did not pass: candidates of one search distribution share its fate, and one or two generations (or a
   band settled at a partial response) of band-edge look-alikes otherwise fill the top of the list, so the
   budget is spent before the in-band candidates below are reached (seen on the panel: retention 0.80-0.87
   or 1.14-1.30 at the top, the winners at ranks 14-40).
   Each is shown in doubling looks (``doubling_looks``) and may fail at any look (impostors cost a few
   showings) but pass only after ``pass_after``: a pass ends the race (nothing left is better), and many
   early looks at many candidates would otherwise pass a lucky one (seen on the panel: images at true
   retention 0.85-0.89 passed after 32 showings, and at 0.896 and 1.153 after 64; after 128 none did).

A pass and a fail are both ``kappa`` standard errors clear of the threshold, with the noise model of front
confirmation (var(rate) = phi * rate, phi from the reference's repeats) for the candidate and the probe's
own running reference mean (fresh presentations every generation: unbiased). Few, doubling looks keep the
inflation of repeated testing small. Pure: the caller measures (``measure(candidate id, first show, n)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np

from .confirm import SEED


@dataclass
class Rung:
    """One candidate's fresh measurements."""

    cid: int  # confirmation id
    role: str  # "floor", or "race k/n" (its rank among the racers)
    shows: int = 0
    total: float = 0.0
    verdict: str = "untested"  # passed / failed / undecided / untested

    @property
    def mean(self) -> float:
        return self.total / max(self.shows, 1)


@dataclass
class Verdict:
    rungs: list[Rung] = field(default_factory=list)
    chosen: Rung | None = None
    reference_rate: float = 0.0
    reference_se: float = 0.0

    @property
    def presentations(self) -> int:
        return sum(r.shows for r in self.rungs)


class Race:
    def __init__(self, mode: str, *, reference_rate: float, reference_se: float, dispersion: float,
                 tolerance: float = 0.1, target_change: float = 0.5, kappa: float = 1.0):
        if mode not in ("invariance", "adversarial"):
            raise ValueError(f"mode: {mode!r} (allowed: invariance, adversarial)")
        self.mode = mode
        self.ref = max(float(reference_rate), 1e-12)
        self.ref_se = float(reference_se)
        self.phi = max(float(dispersion), 0.0)
        self.tolerance, self.target_change, self.kappa = float(tolerance), float(target_change), float(kappa)

    def se(self, rung: Rung) -> float:
        """Standard error of the candidate's fresh mean (a rate of zero is not certain after a few showings)."""
        return float(np.sqrt(self.phi * max(rung.mean, 0.05 * self.ref) / max(rung.shows, 1)))

    def margin(self, rung: Rung) -> float:
        return self.kappa * float(np.hypot(self.se(rung), self.ref_se))

    def closeness(self, rung: Rung) -> float:
        """How far the conservative estimate is from passing (<= 0: passes)."""
        diff = abs(rung.mean - self.ref)
        if self.mode == "invariance":
            return diff + self.margin(rung) - self.tolerance * self.ref
        return self.target_change * self.ref - (diff - self.margin(rung))

    def judge(self, rung: Rung) -> str:
        diff, m = abs(rung.mean - self.ref), self.margin(rung)
        if self.mode == "invariance":
            if diff + m <= self.tolerance * self.ref:
                return "passed"
            return "failed" if diff - m > self.tolerance * self.ref else "undecided"
        if diff - m >= self.target_change * self.ref:
            return "passed"
        return "failed" if diff + m < self.target_change * self.ref else "undecided"

    def test(self, rung: Rung, measure: Callable[[int, int, int], np.ndarray], looks: tuple[int, ...],
             budget: int, pass_after: int) -> int:
        """Show ``rung`` in ``looks`` until it is decided; returns the presentations spent. It may fail at
        any look (futility: impostors cost little) but pass only after ``pass_after`` showings."""
        spent = 0
        for n in looks:
            add = min(n - rung.shows, budget - spent)
            if add <= 0:
                break
            rung.total += float(np.asarray(measure(rung.cid, rung.shows, add), dtype=np.float64).sum())
            rung.shows += add
            spent += add
            rung.verdict = self.judge(rung)
            if rung.verdict == "passed" and rung.shows < pass_after:
                rung.verdict = "undecided"
            elif rung.verdict != "undecided":
                break
        return spent

    def run(self, floors: list[int], racers: Callable[[int | None], list[int]],
            measure: Callable[[int, int, int], np.ndarray], *, budget: int, looks: tuple[int, ...],
            pass_after: int, consecutive: int = 12, max_floors: int = 3,
            lineage: Callable[[int], Hashable] | None = None, strikes: int = 2) -> Verdict:
        """``floors``: established ids, best first (farthest for invariance, nearest for the adversarial
        probe); ``racers(floor id or None)``: plausible ids better than that floor, best first;
        ``measure(cid, first, n)``: n fresh rates of candidate ``cid`` from its showing ``first`` on;
        ``lineage(cid)``: what proposed it (a far-reach band, or one generation of the main search; None:
        unknown); a lineage is skipped after ``strikes`` of its candidates did not pass."""
        out = Verdict(reference_rate=self.ref, reference_se=self.ref_se)
        left = int(budget)

        def test(cid: int, role: str) -> Rung:
            nonlocal left
            rung = Rung(cid, role)
            out.rungs.append(rung)
            left -= self.test(rung, measure, looks, left, pass_after)
            return rung

        lineage_of = lineage or (lambda cid: None)
        struck: dict[Hashable, int] = {}  # non-passes per lineage (None: no lineage, never struck)

        def strike(rung: Rung) -> None:
            fam = lineage_of(rung.cid)
            if fam is not None and rung.verdict != "passed":
                struck[fam] = struck.get(fam, 0) + 1

        floor = None
        for cid in floors[:max_floors]:
            if left <= 0:
                break
            rung = test(cid, "floor")
            strike(rung)
            if rung.verdict == "passed":
                floor = rung
                break
        ladder = racers(None if floor is None else floor.cid)
        seen = {r.cid for r in out.rungs}
        tested, skip, gap = 0, 0, 1
        for rank, cid in enumerate(ladder):
            if cid in seen or struck.get(lineage_of(cid), 0) >= strikes:
                continue  # measured as a floor already, or what proposed it sits where its candidates do not pass
            if skip > 0:  # galloping: a long run of impostors is crossed in a few tests
                skip -= 1
                continue
            if left <= 0:
                break
            rung = test(cid, f"race {rank + 1}/{len(ladder)}")
            if rung.verdict == "passed":
                out.chosen = rung
                return out
            strike(rung)
            tested += 1
            if tested >= consecutive:
                skip, gap = gap - 1, gap * 2
        if floor is not None:
            out.chosen = floor
        elif out.rungs:  # none passes: the one closest to passing, not failed if any (measured fairly)
            fair = [r for r in out.rungs if r.shows > 0 and r.verdict != "failed"] or \
                [r for r in out.rungs if r.shows > 0]
            out.chosen = min(fair, key=self.closeness) if fair else None
        return out


def candidates(confirmation, mode: str, *, tolerance: float, target_change: float, kappa: float
               ) -> tuple[list[int], Callable[[int | None], list[int]]]:
    """From the probe's front confirmation (server/engine/confirm.py): the *established* candidates
    (passing the rule ``kappa`` standard errors clear on the search's shrunk estimates) best first, and
    ``racers(floor)``: the *plausible* ones (passing on the estimate itself) better than the floor, best first.
    Only candidates whose codes are still kept can be shown again."""
    d_low, d_high, se = confirmation._estimates()
    ref = max(confirmation.reference_rate, 1e-12)
    ids = np.array([i for i in range(len(d_low)) if i in confirmation.codes], dtype=np.int64)
    sign = 1.0 if mode == "invariance" else -1.0  # best first: farthest (invariance), nearest (adversarial)
    ids = ids[np.argsort(-sign * d_low[ids], kind="stable")]
    if mode == "invariance":
        established = ids[d_high[ids] + kappa * se[ids] <= tolerance * ref]
        plausible = ids[d_high[ids] <= tolerance * ref]
    else:
        established = ids[d_high[ids] - kappa * se[ids] >= target_change * ref]
        plausible = ids[d_high[ids] >= target_change * ref]

    def racers(floor: int | None) -> list[int]:
        better = plausible if floor is None else plausible[sign * d_low[plausible] > sign * d_low[floor]]
        return [int(i) for i in better]
    return [int(i) for i in established], racers


def lineages(confirmation, where: list) -> Callable[[int], Hashable]:
    """What proposed each candidate: its far-reach band, else its generation of the main search (``where``:
    (generation, index) per candidate id); the far-reach seeds have none (each stands alone). Candidates
    of one lineage share a search distribution and so mostly its fate: seen on the panel at the honest
    budget, the top of the ladder was one or two generations whose 12 images all sat at retention
    1.14-1.30 (or 0.68-0.92) while their shared lucky first measurements made them look in the band; the
    in-band ones came from earlier generations below."""
    def lineage(cid: int) -> Hashable:
        band = confirmation.family_of(cid)
        if band == SEED:  # each of the reference's transforms stands alone
            return None
        return ("band", band) if band >= 0 else ("generation", int(where[cid][0]))
    return lineage


def doubling_looks(pass_after: int) -> tuple[int, ...]:
    """Showings after which a candidate is judged: pass_after/16, /8, /4, /2 and pass_after (8 ... 128)."""
    first = max(int(pass_after) // 16, 2)
    max_shows = int(pass_after)
    out = []
    n = first
    while n < max_shows:
        out.append(n)
        n *= 2
    return tuple(out) + (int(max_shows),)
