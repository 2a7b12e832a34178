"""snslab's own method, through the engine's real code path (server.engine.search.SnSSearch).

The benchmark owns only the glue: a pixel stage on the grey image (exact: its distances are scale * ||dz||
times a constant), the start code, the engine defaults read from server.config.ProbeConfig (front
confirmation included: server/engine/confirm.py), and the mapping from the search's candidates back to
presentation order for the report.
"""

from __future__ import annotations

import numpy as np

from server.engine.base import Stage
from server.engine.optimizers import make_optimizer
from server.engine.probes import Probe
from server.engine.search import SnSSearch

from server.engine.confirm import FrontConfirmation
from server.engine.far_reach import FarReach, band_weights
from .methods import Method, reference_x0


class GreyPixelStage(Stage):
    """Pixels of the grey channel, flattened: distances are exactly scale * ||z - z_ref|| (no clipping)."""

    name = "pixel"

    def features(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float64)[..., 0]
        return x.reshape(len(x), -1)


def engine_defaults(probe: str = "invariance") -> dict:
    from server.config import ProbeConfig

    cfg = ProbeConfig(mode=probe)  # (the adversarial probe has its own default search: issue 12)
    return {"optimizer": cfg.optimizer.name, "sigma0": cfg.optimizer.sigma0, "popsize": cfg.population,
            "ordering": cfg.ordering, "confirm": int(cfg.confirm), "retests": cfg.retests,
            "kappa": cfg.confirm_kappa, "far_bands": cfg.far_reach, "far_per_band": cfg.far_population,
            "far_sigma0": cfg.far_sigma0, "far_generations": cfg.far_generations,
            "far_restart": cfg.far_restart, "far_seed_repeats": cfg.far_seed_repeats}


# The engine as it was before this study (popsize 40, raw single measurements, the published orderings).
BEFORE_STUDY = {"popsize": 40, "confirm": 0, "retests": 0, "ordering": "published", "far_bands": 0}


class SnSLab(Method):
    """SnSSearch with the engine's defaults (server.config.ProbeConfig); ``overrides`` change single settings
    for experiments (``ordering="published"``: onevar for invariance, random for adversarial)."""

    def __init__(self, inst, window_s, seed, name: str = "snslab", **overrides):
        super().__init__(inst, window_s, seed)
        self.name = name
        cfg = engine_defaults(inst.probe)
        cfg.update(overrides)
        self.cfg = cfg
        gen = inst.space.generator
        x0 = reference_x0(inst, self.rng, cfg.get("start", "reference"))
        opt = make_optimizer(cfg["optimizer"], x0, float(cfg["sigma0"]), int(cfg["popsize"]), seed=int(seed),
                             **cfg.get("optimizer_options", {}))
        ordering = cfg.get("ordering") or ""
        if ordering == "published":
            ordering = "onevar" if inst.probe == "invariance" else "random"
        probe = Probe(inst.probe, ("pixel",), ordering)
        confirmation = None
        if int(cfg.get("confirm", 0)):
            confirmation = FrontConfirmation(inst.probe, int(cfg["retests"]), float(cfg["kappa"]),
                                             shrink=bool(int(cfg.get("shrink", 1))))
        ref_image = gen.render(inst.z_ref[None])[0]
        far = None
        if int(cfg.get("far_bands", 0)) and inst.probe == "invariance":
            weights = band_weights(int(cfg["far_bands"]))
            if "far_weights" in cfg:  # e.g. far_weights=3/1
                weights = [float(w) for w in str(cfg["far_weights"]).split("/")][: int(cfg["far_bands"])]
            gens = cfg.get("far_generations")
            kw = dict(per_band=int(cfg["far_per_band"]), weights=weights, sigma0=float(cfg["far_sigma0"]),
                      seed=int(seed), generations=None if gens in (None, "none") else int(gens),
                      restart_at=int(cfg.get("far_restart", 0)), seed_repeats=int(cfg.get("far_seed_repeats", 1)))
            if int(cfg.get("far_seeds", 1)):
                names = cfg.get("far_transforms")
                far = FarReach.for_reference(gen, inst.z_ref, ref_image,
                                             None if names is None else tuple(str(names).split("/")),
                                             affine=int(cfg.get("far_restart", 0)) > 0, **kw)
            else:
                far = FarReach(inst.z_ref, **kw)
        self.search = SnSSearch(gen, {"pixel": GreyPixelStage()}, probe, opt, seed=int(seed),
                                reference_image=ref_image, confirmation=confirmation, far_reach=far)
        self._offsets: list[int] = []  # presentation index of each generation's first row
        self._presented = 0

    def ask(self):
        self._proposal = self.search.ask()
        return self._proposal.codes  # the optimizer's new codes, then the engine's re-tests

    def tell(self, counts, ref_counts):
        rates = (counts / self.window_s)[:, None]
        refs = (ref_counts / self.window_s)[:, None]
        self.search.tell(rates, reference_responses=refs, images=self._proposal.images)
        self._offsets.append(self._presented)
        self._presented += len(rates)
        self.generation += 1

    def report(self):
        s = self.search
        offsets = np.asarray(self._offsets)
        sel = s.result()
        selected = int(offsets[sel.generation] + sel.index)
        front = s.reported_front()  # (generation, row) -> presentation index
        return offsets[front[:, 0]] + front[:, 1], selected
