"""One SnS probe as an ask/tell loop over images: the engine's whole data flow for one generation.

    search = SnSSearch(generator, {"pixel": PixelStage()}, Probe("invariance", ("pixel",)),
                       make_optimizer("sepcma", x0, 1.0, 40, seed=1), reference_image=ref, seed=1)
    while not search.done:
        proposal = search.ask()                      # codes -> images
        rates = neuron(proposal.images)              # shown on a rig, or a model subject in silico
        search.tell(rates, reference_responses=neuron(ref[None]))
    result = search.result()                         # the code that was actually scored

Nothing here does I/O; ``state()``/``restore()`` make a run resumable bit for bit (the generator, stages
and subject are rebuilt from the session's config, not pickled).
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .base import ImageGenerator, Stage
from .confirm import SEED, FrontConfirmation
from .far_reach import FarReach
from .optimizers import Optimizer
from .pareto import first_front, newest_of_global_front, nondominated_sort, scalar_fitness, within_front_key
from .probes import UNIT, EarlyStop, Probe, stage_distances, unit_distances


@dataclass
class Proposal:
    generation: int
    codes: np.ndarray  # (P, n) the codes that will be scored (after the generator's projection)
    images: np.ndarray  # (P, H, W, 3) float32 in [0, 1]
    n_new: int = -1  # rows [:n_new] are the optimizer's; the rest re-test earlier front candidates

    def __post_init__(self):
        if self.n_new < 0:
            self.n_new = len(self.codes)


@dataclass
class GenerationReport:
    generation: int
    responses: np.ndarray  # (P, U) as measured
    distances: dict[str, np.ndarray]  # per stage and "unit": (P,)
    objectives: np.ndarray  # (P, m) maximised; empty for maximize
    fronts: np.ndarray  # (P,) front index, zeros for maximize
    fitness: np.ndarray  # (P,) what the optimizer was told (higher is better)
    reference_response: np.ndarray  # (U,) the running estimate used for this generation
    stop: bool = False


@dataclass
class Selection:
    """The probe's answer: a code that was scored, with what was measured for it."""

    generation: int
    index: int  # row within that generation
    code: np.ndarray
    response: np.ndarray  # (U,)
    distances: dict[str, float]


def _without_codes(confirmation: FrontConfirmation | None) -> FrontConfirmation | None:
    """A copy that remembers which candidates it keeps but not their codes (storage has them)."""
    if confirmation is None:
        return None
    c = copy.copy(confirmation)
    c.codes = sorted(confirmation.codes)
    return c


@dataclass
class _Pool:
    """Candidates kept for the final selection: every generation's first front (maximize: its best)."""

    generation: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list)
    responses: list[np.ndarray] = field(default_factory=list)
    distances: list[dict[str, float]] = field(default_factory=list)
    fitness: list[float] = field(default_factory=list)


class SnSSearch:
    def __init__(
        self,
        generator: ImageGenerator,
        stages: dict[str, Stage],
        probe: Probe,
        optimizer: Optimizer,
        *,
        seed: int,
        reference_image: np.ndarray | None = None,
        max_generations: int | None = None,
        early_stop: EarlyStop | None = None,
        confirmation: FrontConfirmation | None = None,
        far_reach: "FarReach | None" = None,
    ):
        missing = [s for s in probe.stages if s not in stages]
        if missing:
            raise ValueError(f"stages: probe uses {missing} but only {sorted(stages)} were built")
        if probe.mode != "maximize" and reference_image is None:
            raise ValueError(f"reference: the {probe.mode} probe needs a reference image")
        self.generator = generator
        self.stages = stages
        self.probe = probe
        self.optimizer = optimizer
        self.max_generations = max_generations
        self.early_stop = early_stop
        self.confirmation = confirmation if probe.mode != "maximize" else None
        self._confirm_where: list[tuple[int, int]] = []  # confirmation id -> (generation, row)
        self.far_reach = far_reach if probe.mode == "invariance" else None  # server/engine/far_reach.py
        self._n_opt = 0  # rows [:n_opt] are the optimizer's, [n_opt:n_new] the far-reach bands'
        self._n_new = 0
        self._retest_ids = np.zeros(0, dtype=np.int64)
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
        self.generation = 0
        self.stopped = False
        self._pending: np.ndarray | None = None
        self._ref_sum: np.ndarray | None = None
        self._ref_count = 0
        self.pool = _Pool()
        attach = getattr(optimizer, "attach", None)
        if attach is not None and reference_image is not None:  # a search seeded from the reference image
            attach(generator, reference_image, probe.mode)
        self.reference_features: dict[str, np.ndarray] = {}
        self.reference_norms: dict[str, float] = {}
        if reference_image is not None:
            ref = np.asarray(reference_image, dtype=np.float32)[None]
            for name in probe.stages:
                f = stages[name].features(ref)[0]
                self.reference_features[name] = f
                self.reference_norms[name] = float(np.linalg.norm(f))

    # -- the loop --------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.stopped or (self.max_generations is not None and self.generation >= self.max_generations)

    def ask(self) -> Proposal:
        if self._pending is None:
            new = self.generator.project(self.optimizer.ask())
            self._n_opt = len(new)
            if self.far_reach is not None:
                new = np.concatenate([new, self.generator.project(self.far_reach.ask())])
            self._n_new = len(new)
            self._retest_ids = np.zeros(0, dtype=np.int64)
            if self.confirmation is not None:
                self._retest_ids, again = self.confirmation.choose_retests()
                if len(self._retest_ids):
                    new = np.concatenate([new, again])
            self._pending = new
        codes = self._pending
        return Proposal(self.generation, codes, self.generator.render(codes), self._n_new)

    @property
    def reference_response(self) -> np.ndarray | None:
        return None if self._ref_sum is None else self._ref_sum / self._ref_count

    def tell(
        self,
        responses: np.ndarray,
        reference_responses: np.ndarray | None = None,
        images: np.ndarray | None = None,
    ) -> GenerationReport:
        """Score the pending proposal from the unit's measured responses (P, U) and tell the optimizer.

        ``reference_responses`` (k, U) are this generation's presentations of the reference image; their
        running mean over the whole session is the unit's reference response. ``images`` saves a re-render
        when the caller still has the proposal's images.
        """
        if self._pending is None:
            raise RuntimeError("tell() without a pending ask()")
        all_codes = self._pending
        r_all = np.asarray(responses, dtype=np.float64)
        if r_all.ndim == 1:
            r_all = r_all[:, None]
        if r_all.shape[0] != len(all_codes):
            raise ValueError(f"responses: expected {len(all_codes)} rows (one per candidate), got {r_all.shape[0]}")
        if not np.all(np.isfinite(r_all)) or (r_all < 0).any():
            raise ValueError("responses: must be finite and non-negative (spike counts or rates)")
        n_new = self._n_new or len(all_codes)
        codes, r = all_codes[:n_new], r_all[:n_new]
        if images is not None:
            images = images[:n_new]
        if reference_responses is not None:
            rr = np.asarray(reference_responses, dtype=np.float64).reshape(-1, r.shape[1])
            if not np.all(np.isfinite(rr)) or (rr < 0).any():
                raise ValueError("reference_responses: must be finite and non-negative")
            self._ref_sum = rr.sum(0) if self._ref_sum is None else self._ref_sum + rr.sum(0)
            self._ref_count += len(rr)
            if self.confirmation is not None:
                self.confirmation.add_reference(rr.mean(axis=1))

        if self.probe.mode == "maximize":
            fitness = r.mean(axis=1)
            distances = {UNIT: fitness.copy()}
            fronts = np.zeros(len(r), dtype=np.int64)
            objectives = np.zeros((len(r), 0))
            best = int(np.argmax(fitness))
            self._keep(best, codes, r, distances, fitness)
        else:
            if self.reference_response is None:
                raise ValueError("reference_responses: needed at least once before the first tell of a probe")
            if images is None:
                images = self.generator.render(codes)
            distances = {
                name: stage_distances(self.stages[name].features(images), self.reference_features[name])
                for name in self.probe.stages
            }
            distances[UNIT] = unit_distances(r, self.reference_response)
            objectives = self.probe.objectives(distances, self.reference_norms)
            fronts = nondominated_sort(objectives)
            key = within_front_key(
                self.probe.ordering, objectives, fronts, self.probe.squeezes_unit, len(self.probe.stages), self.rng
            )
            fitness = scalar_fitness(fronts, key)
            for i in range(len(codes)):
                if self.pooled(self.generation, objectives[i], int(fronts[i])):
                    self._keep(i, codes, r, distances, fitness)

        n_opt = self._n_opt or n_new
        measured = getattr(self.optimizer, "tell_measured", None)
        if measured is not None and self.probe.mode == "adversarial":  # (server.engine.adversarial)
            ref_norm = float(np.linalg.norm(self.reference_response))
            measured(codes, fitness, distances[UNIT] / max(ref_norm, 1e-12))
        else:
            self.optimizer.tell(codes[:n_opt], fitness[:n_opt])
        groups, seed_repeats, bands = [n_new], 0, 0
        if self.far_reach is not None and n_opt < n_new:
            groups = [n_opt, *self.far_reach.groups()]
            bands = len(self.far_reach.bands) if self.far_reach.active else 0
            seed_repeats = self.far_reach.pending_seed_repeats
            self.far_reach.tell(codes[n_opt:], distances[self.probe.stages[0]][n_opt:], r[n_opt:].mean(axis=1),
                                float(self.reference_response.mean()),
                                self.confirmation.dispersion if self.confirmation is not None else 0.0)
        if self.confirmation is not None:
            d_low, rates, ids = distances[self.probe.stages[0]], r.mean(axis=1), []
            first_repeat = len(groups) - seed_repeats  # far-reach seeds shown again: re-tests of their first showing
            for k, (a, b) in enumerate(zip(np.cumsum([0, *groups[:-1]]), np.cumsum(groups))):  # far-reach apart
                if k >= first_repeat:
                    self.confirmation.update(seed_ids, rates[a:b])
                    continue
                seed_ids = self.confirmation.add(codes[a:b], d_low[a:b], rates[a:b], small_group=k > 0,
                                                 family=k - 1 if 1 <= k <= bands else (-1 if k == 0 else SEED))
                ids.extend(seed_ids)
            self._confirm_where.extend((self.generation, int(i)) for i in range(len(ids)))
            self.confirmation.update(self._retest_ids, r_all[n_new:].mean(axis=1))
            if self.far_reach is not None and self.far_reach.wants_restart:
                self._restart_far_reach()
        stop = False
        if self.early_stop is not None and self.probe.mode != "maximize":
            stop = self.early_stop.should_stop(self.generation, r)
        report = GenerationReport(
            self.generation, r_all, distances, objectives, fronts, fitness,
            self.reference_response if self.reference_response is not None else np.zeros(r.shape[1]), stop,
        )
        self._pending = None
        self.generation += 1
        self.stopped = self.stopped or stop
        return report

    def _restart_far_reach(self) -> None:
        """Bands restart from the conservative confirmed front (far_reach.restart_at; server/engine/far_reach.py)."""
        conf = self.confirmation
        ids = np.array([i for i in conf.front() if int(i) in conf.codes], dtype=np.int64)
        if ids.size == 0:
            return
        d_low, d_high, se = conf._estimates()
        ref = max(conf.reference_rate, 1e-12)
        self.far_reach.restart_from(np.stack([conf.codes[int(i)] for i in ids]), d_low[ids],
                                    (d_high[ids] + conf.kappa * se[ids]) / ref)

    def _keep(self, i, codes, r, distances, fitness):
        self.add_to_pool(self.generation, i, codes[i], r[i], {k: float(v[i]) for k, v in distances.items()},
                         float(fitness[i]))

    def add_to_pool(self, generation: int, index: int, code, response, distances: dict[str, float],
                    fitness: float) -> None:
        """Remember a scored candidate for the final selection (also used to rebuild the pool from storage)."""
        self.pool.generation.append(int(generation))
        self.pool.index.append(int(index))
        self.pool.codes.append(np.array(code, dtype=np.float64))
        self.pool.responses.append(np.array(response, dtype=np.float64))
        self.pool.distances.append(dict(distances))
        self.pool.fitness.append(float(fitness))

    def pooled(self, generation: int, objectives_row: np.ndarray, front: int) -> bool:
        """Whether a scored candidate belongs in the pool: its generation's first front, within bounds."""
        return front == 0 and bool(np.isfinite(objectives_row).all())

    # -- the answer ------------------------------------------------------------------------------
    def result(self) -> Selection:
        """The probe's reported image (the rule is also in the README, "The reference, the reported image").

        Maximize: the best measured image (the maximum of noisy measurements: biased up, which is why an
        in-silico run re-measures the reference before a probe). Probes under spike noise (a
        ``FrontConfirmation``): from the conservative confirmed front, ``FrontConfirmation.selected`` —
        invariance: the farthest (first stage) image whose rate is within +-10% of the reference's
        (two-sided, ``confirm_kappa`` standard errors conservative), else the closest in rate; adversarial:
        the nearest image whose rate changed by >= 50% of the reference's, else the largest change.
        Without confirmation (noise-free, or ``confirm = false``), or when the chosen code was forgotten: the
        newest member of the global first front, recomputed over every generation's first front with the
        *final* reference response estimate. The code returned is always the one that was scored (not the
        next generation's). In silico, ``server.insilico.verify_selection`` may then re-choose it from
        fresh presentations.
        """
        pool = self.pool
        if not pool.codes and not self._confirm_where:
            raise RuntimeError("result() before any generation was scored")
        if self.confirmation is not None and self._confirm_where:
            cid = self.confirmation.selected()
            code = self.confirmation.codes.get(int(cid))
            if code is not None:  # (codes far from every front are forgotten; then fall back to the pool)
                g, i = self._confirm_where[cid]
                d_low, d_high, _ = self.confirmation._estimates()
                rate = self.confirmation.rate_sum[cid] / self.confirmation.shows[cid]
                return Selection(g, i, code.copy(), np.array([rate]),
                                 {self.probe.stages[0]: float(d_low[cid]), UNIT: float(d_high[cid])})
        if self.probe.mode == "maximize":
            k = int(np.argmax(pool.fitness))
        else:
            distances = {s: np.array([d[s] for d in pool.distances]) for s in self.probe.stages}
            distances[UNIT] = unit_distances(np.array(pool.responses), self.reference_response)
            objectives = self.probe.objectives(distances, self.reference_norms)
            k = newest_of_global_front(objectives, np.array(pool.generation), np.array(pool.fitness))
        dist = dict(pool.distances[k])
        if self.probe.mode != "maximize":
            dist[UNIT] = float(unit_distances(pool.responses[k][None], self.reference_response)[0])
        return Selection(pool.generation[k], pool.index[k], pool.codes[k].copy(), pool.responses[k].copy(), dist)

    def reported_front(self) -> np.ndarray:
        """(generation, row) of each image on the front the probe reports: under noise the conservative
        confirmed front (``FrontConfirmation``), otherwise the global first front over every generation's
        first front, with the final reference response estimate."""
        if self.probe.mode == "maximize":
            raise ValueError("mode: a maximize run has no front (allowed: invariance, adversarial)")
        if self.confirmation is not None and self._confirm_where:
            return np.asarray(self._confirm_where, dtype=np.int64).reshape(-1, 2)[self.confirmation.front()]
        pool = self.pool
        if not pool.codes:
            return np.zeros((0, 2), dtype=np.int64)
        distances = {s: np.array([d[s] for d in pool.distances]) for s in self.probe.stages}
        distances[UNIT] = unit_distances(np.array(pool.responses), self.reference_response)
        rows = first_front(self.probe.objectives(distances, self.reference_norms))
        return np.stack([np.asarray(pool.generation)[rows], np.asarray(pool.index)[rows]], axis=1)

    def front_history(self) -> list[tuple[int, np.ndarray]]:
        """Per generation, the (stretch, squeeze) distances of its first front, for plots."""
        out: dict[int, list] = {}
        for g, d in zip(self.pool.generation, self.pool.distances):
            out.setdefault(g, []).append([d[s] for s in self.probe.objective_names])
        return [(g, np.array(v)) for g, v in sorted(out.items())]

    # -- persistence -----------------------------------------------------------------------------
    def state(self, include_pool: bool = True) -> bytes:
        """Everything needed to continue bit for bit. Without the pool (which grows every generation) when
        the caller can rebuild it from storage (``add_to_pool``), which keeps per-generation states small."""
        return pickle.dumps(
            {
                "optimizer": self.optimizer.state(),
                "rng": self.rng.bit_generator.state,
                "generation": self.generation,
                "stopped": self.stopped,
                "pending": self._pending,
                "ref_sum": self._ref_sum,
                "ref_count": self._ref_count,
                "pool": self.pool if include_pool else None,
                "early_stop": None if self.early_stop is None else list(self.early_stop.history),
                "confirmation": self.confirmation if include_pool else _without_codes(self.confirmation),
                "confirm_where": self._confirm_where,
                "n_new": self._n_new,
                "retest_ids": self._retest_ids,
                "far_reach": self.far_reach,
                "n_opt": self._n_opt,
            },
            protocol=5,
        )

    def restore_confirmation_codes(self, code_of: "Callable[[int, int], np.ndarray]") -> None:
        """After ``load_state`` of a state saved without the pool: fetch the kept candidates' codes
        (``code_of(generation, row)``, from storage)."""
        c = self.confirmation
        if c is None or not isinstance(c.codes, list):
            return
        c.codes = {int(i): code_of(*self._confirm_where[int(i)]) for i in c.codes}

    def load_state(self, blob: bytes) -> None:
        s = pickle.loads(blob)
        self.optimizer = Optimizer.restore(s["optimizer"])
        self.rng.bit_generator.state = s["rng"]
        self.generation = s["generation"]
        self.stopped = s["stopped"]
        self._pending = s["pending"]
        self._ref_sum = s["ref_sum"]
        self._ref_count = s["ref_count"]
        if s["pool"] is not None:
            self.pool = s["pool"]
        self.confirmation = s["confirmation"]
        self._confirm_where = list(s["confirm_where"])
        self._n_new = s["n_new"]
        self._retest_ids = s["retest_ids"]
        self.far_reach = s.get("far_reach", self.far_reach)
        self._n_opt = s.get("n_opt", 0)
        if self.early_stop is not None and s["early_stop"] is not None:
            self.early_stop.history = list(s["early_stop"])
