"""snslab's own method, through the engine's real code path (server.engine.search.SnSSearch).

The benchmark owns only the glue: a pixel stage on the grey image (exact: its distances are scale * ||dz||
times a constant), the start code and the engine defaults read from server.config.ProbeConfig, and the
mapping from the search's pool of scored candidates back to presentation order for the report.
"""

from __future__ import annotations

import numpy as np

from server.engine.base import Stage
from server.engine.optimizers import make_optimizer
from server.engine.pareto import first_front
from server.engine.probes import UNIT, Probe, unit_distances
from server.engine.search import SnSSearch

from .confirm import FrontConfirmation
from .methods import Method, reference_x0


class GreyPixelStage(Stage):
    """Pixels of the grey channel, flattened: distances are exactly scale * ||z - z_ref|| (no clipping)."""

    name = "pixel"

    def features(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float64)[..., 0]
        return x.reshape(len(x), -1)


def engine_defaults() -> dict:
    from server.config import ProbeConfig

    cfg = ProbeConfig()
    return {"optimizer": cfg.optimizer.name, "sigma0": cfg.optimizer.sigma0, "popsize": cfg.population,
            "ordering": cfg.ordering}


class SnSLab(Method):
    """SnSSearch with the engine's defaults; ``overrides`` change single settings for experiments."""

    def __init__(self, inst, window_s, seed, name: str = "snslab", **overrides):
        super().__init__(inst, window_s, seed)
        self.name = name
        cfg = engine_defaults()
        cfg.update(overrides)
        self.cfg = cfg
        space = inst.space
        gen = space.generator
        x0 = reference_x0(inst, self.rng, cfg.get("start", "reference"))
        opt = make_optimizer(cfg["optimizer"], x0, float(cfg["sigma0"]), int(cfg["popsize"]), seed=int(seed),
                             **cfg.get("optimizer_options", {}))
        probe = Probe(inst.probe, ("pixel",), cfg.get("ordering") or "")
        ref_image = gen.render(inst.z_ref[None])[0]
        self.search = SnSSearch(gen, {"pixel": GreyPixelStage()}, probe, opt, seed=int(seed),
                                reference_image=ref_image)
        self._offsets: list[int] = []
        self._presented = 0
        retests = int(cfg.get("retests", 0))
        self.confirm = None
        if retests > 0 or int(cfg.get("confirm", 0)):
            self.confirm = FrontConfirmation(inst.probe, retests, float(cfg.get("kappa", 1.0)),
                                             shrink=bool(int(cfg.get("shrink", 1))))
            self._first_index: list[int] = []  # confirmation id -> presentation index of its first showing

    def ask(self):
        self._proposal = self.search.ask()
        codes = self._proposal.codes
        self._retest_ids = np.zeros(0, dtype=np.int64)
        if self.confirm is not None:
            self._retest_ids, again = self.confirm.choose_retests()
            if len(self._retest_ids):
                codes = np.concatenate([codes, again])
        return codes

    def tell(self, counts, ref_counts):
        P = len(self._proposal.codes)
        rates = (counts / self.window_s)[:, None]
        refs = (ref_counts / self.window_s)[:, None]
        self.search.tell(rates[:P], reference_responses=refs, images=self._proposal.images)
        if self.confirm is not None:
            self.confirm.add_reference(refs[:, 0])
            d_low = np.linalg.norm(self._proposal.codes - self.inst.z_ref, axis=1)
            ids = self.confirm.add(self._proposal.codes, d_low, rates[:P, 0])
            self._first_index.extend((self._presented + np.arange(len(ids))).tolist())
            self.confirm.update(self._retest_ids, rates[P:, 0])
        self._offsets.append(self._presented)
        self._presented += len(rates)
        self.generation += 1

    def report(self):
        if self.confirm is not None:
            first = np.asarray(self._first_index)
            return first[self.confirm.front()], int(first[self.confirm.selected()])
        return self._search_report()

    def _search_report(self):
        pool = self.search.pool
        s = self.search
        distances = {"pixel": np.array([d["pixel"] for d in pool.distances])}
        distances[UNIT] = unit_distances(np.array(pool.responses), s.reference_response)
        F = s.probe.objectives(distances, s.reference_norms)
        offsets = np.asarray(self._offsets)
        where = offsets[np.asarray(pool.generation)] + np.asarray(pool.index)
        front = where[first_front(F)]
        sel = s.result()
        return front, int(self._offsets[sel.generation] + sel.index)
