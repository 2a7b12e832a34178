"""Far reach for the invariance probe: extra search distributions that stretch while keeping the response.

The main search ranks each generation by Pareto fronts of (stretch, |r - r_ref|). From the reference that
ranking lets the search mean drift into silence: every far image is on the first front, so the mean follows
stretch and loses the response (docs/benchmarks.md, "Reaching far invariances"). Here a few small
separable CMA-ES distributions ("bands") run beside it, each told a scalar fitness that trades stretch
against the change of response with its own weight:

    fitness = stretch / scale - weight * |r - r_ref| / r_ref

(``scale``: the largest stretch measured so far; the rate a shrunk estimate from the band's own
generation). A heavy weight keeps the response and stretches along the directions the unit ignores; a
light one goes farther and accepts more change. Their candidates enter the probe's front, confirmation and
re-tests like any other; the main optimizer is told only its own rows.

Seeds: the reference's own transforms that often keep a unit's response (contrast inversion about the
mean luminance, the 180-degree rotation, mirror images) are shown in the first generation when the
generator can encode images; each band then restarts from the seed that scores best for it if that beats
its own start. The bands search for ``generations`` generations (default 60), then only the main search
goes on: a band left at a partial response mostly adds noise impostors to the reported front.
"""

from __future__ import annotations

import numpy as np

from .affine import affine_controls
from .base import ImageGenerator
from .optimizers import Optimizer, make_optimizer


TRANSFORMS = ("contrast:-1", "rotation:180", "mirror:horizontal", "mirror:vertical")
IDENTITIES = ("rotation:0", "translation:0", "scale:1")  # affine controls equal to the reference itself
WINDOWS = (0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3)  # half-widths of the windows, as fractions of the image side
WINDOW_FILLS = (0.0, 1.0)  # black and white outside
N_AFFINE_SEEDS = 23 + len(WINDOWS) * len(WINDOW_FILLS)  # the 27 affine controls less the 3 identities and rotation:180, and windows


def reference_transforms(image: np.ndarray, affine: bool = False) -> list[tuple[str, np.ndarray]]:
    """Transforms of the reference image that are candidate invariances of visual units: contrast
    inversion, the 180-degree rotation, mirror images and (``affine``) every affine control of
    server/engine/controls.py that differs from the reference (black padding, as the controls)."""
    img = np.asarray(image, dtype=np.float32)
    m = float(img.mean())
    out = [
        ("contrast:-1", np.clip(2 * m - img, 0, 1)),
        ("rotation:180", np.ascontiguousarray(np.rot90(img, 2))),
        ("mirror:horizontal", np.ascontiguousarray(img[:, ::-1])),
        ("mirror:vertical", np.ascontiguousarray(img[::-1])),
    ]
    if affine:
        have = {name for name, _ in out} | set(IDENTITIES)
        out += [(name, a) for name, a in affine_controls(img, fill=0.0) if name not in have]
        out += [w for fill in WINDOW_FILLS for w in windows(img, fill)]
    return out


def windows(image: np.ndarray, fill: float = 0.0) -> list[tuple[str, np.ndarray]]:
    """The reference kept only inside square windows about its contrast centroid (where its structure, and
    so usually the unit's receptive field, is), filled outside like the affine controls: a unit that ignores
    its surround keeps its response far from the reference (the scale controls' invariance, without
    shrinking what the unit sees)."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    wt = np.abs(img - img.mean()).reshape(h, w, -1).sum(-1).astype(np.float64) + 1e-12
    yy, xx = np.mgrid[:h, :w]
    cy, cx = float((wt * yy).sum() / wt.sum()), float((wt * xx).sum() / wt.sum())
    out = []
    for f in WINDOWS:
        inside = (np.abs(yy - cy) <= f * h) & (np.abs(xx - cx) <= f * w)
        if img.ndim == 3:
            inside = inside[..., None]
        out.append((f"window:{f:g}" + (f":fill{fill:g}" if fill else ""), np.where(inside, img, np.float32(fill)).astype(np.float32)))
    return out


def far_candidates(config) -> int:
    """Most new far-reach candidates per generation of a probe config (``ProbeConfig``), for sizing checks."""
    if config.mode != "invariance" or not config.far_reach:
        return 0
    seeds = (len(TRANSFORMS) + (N_AFFINE_SEEDS if getattr(config, "far_restart", 0) else 0)) \
        * getattr(config, "far_seed_repeats", 1)
    return config.far_reach * config.far_population + seeds


def band_weights(bands: int) -> tuple[float, ...]:
    """Stretch-against-change weights of ``bands`` bands: 3, 1, 1/3, ... (heaviest first)."""
    return tuple(3.0 ** (1 - j) for j in range(int(bands)))


class FarReach:
    def __init__(self, x0: np.ndarray, *, per_band: int = 5, weights=(3.0, 1.0), sigma0: float = 0.2,
                 seed: int = 0, seeds: np.ndarray | None = None, generations: int | None = None,
                 restart_at: int = 0, seed_repeats: int = 1):
        if not weights or per_band < 2:
            raise ValueError("far reach: needs at least one band of at least 2 candidates")
        self.weights = tuple(float(w) for w in weights)
        self.per_band = int(per_band)
        ss = np.random.SeedSequence([int(seed), 0xFA5]).spawn(len(self.weights))  # apart from the search's own
        self.bands: list[Optimizer] = [
            make_optimizer("sepcma", np.asarray(x0, dtype=np.float64), sigma0, self.per_band,
                           seed=int(s.generate_state(1)[0])) for s in ss
        ]
        self.sigma0 = float(sigma0)
        self.seeds = None if seeds is None or len(seeds) == 0 else np.asarray(seeds, dtype=np.float64)
        self.scale = 0.0
        self._asked_seeds = False
        self.generations = generations  # the bands stop after this many (None: never)
        self.generation = 0
        self.seed_repeats = max(int(seed_repeats), 1)  # each seed shown this many times in the first generation
        self.restart_at = int(restart_at)  # after this many generations, restart from the confirmed front (0: never)

    @classmethod
    def for_reference(cls, generator: ImageGenerator, reference_code: np.ndarray,
                      reference_image: np.ndarray | None, transforms: tuple[str, ...] | None = None,
                      affine: bool = False, **kw) -> "FarReach":
        """Bands started at the reference code, seeded with the reference's transforms (``transforms``:
        labels of ``reference_transforms`` to use, default all; ``affine``: also every affine control) when the
        generator can encode images."""
        seeds = None
        chosen = [t for name, t in reference_transforms(reference_image, affine) if transforms is None or name in transforms] \
            if reference_image is not None else []
        if chosen:
            try:
                seeds = generator.project(generator.encode(np.stack(chosen)))
            except NotImplementedError:
                seeds = None
        return cls(reference_code, seeds=seeds, **kw)

    @property
    def active(self) -> bool:
        """Whether the bands still search (after ``generations`` they stop: a band left at a partial
        response mostly adds impostors to the front under noise, docs/benchmarks.md)."""
        return self.generations is None or self.generation < self.generations

    @property
    def size(self) -> int:
        """Candidates added this generation (the first generation also shows the seeds)."""
        return sum(self.groups())

    def groups(self) -> list[int]:
        """Sizes of this generation's groups (each band, then the seeds): each is its own prior for the
        shrunk rate estimates of front confirmation, as a generation is for the main search."""
        return [self.per_band] * (len(self.bands) if self.active else 0) + (
            [] if self._asked_seeds or self.seeds is None else [len(self.seeds)] * self.repeats)

    @property
    def repeats(self) -> int:
        return getattr(self, "seed_repeats", 1)  # (states stored before seed repeats existed)

    @property
    def pending_seed_repeats(self) -> int:
        """Extra showings of the seeds in this generation (the last groups): re-tests of the first showing."""
        return 0 if self._asked_seeds or self.seeds is None else self.repeats - 1

    def ask(self) -> np.ndarray:
        rows = [b.ask() for b in self.bands] if self.active else [np.zeros((0, self.bands[0].n))]
        if not self._asked_seeds and self.seeds is not None:
            rows.append(np.tile(self.seeds, (self.repeats, 1)))
        return np.concatenate(rows)

    def tell(self, codes: np.ndarray, stretch: np.ndarray, rates: np.ndarray, reference_rate: float,
             dispersion: float) -> None:
        stretch = np.asarray(stretch, dtype=np.float64)
        rates = np.asarray(rates, dtype=np.float64)
        self.scale = max(self.scale, float(stretch.max()))
        ref = max(float(reference_rate), 1e-9)
        k = self.per_band if self.active else 0
        self.generation += 1
        for j, (band, w) in enumerate(zip(self.bands, self.weights) if k else ()):
            sl = slice(j * k, (j + 1) * k)
            r = _shrunk(rates[sl], dispersion)
            fit = stretch[sl] / max(self.scale, 1e-12) - w * np.abs(r - ref) / ref
            band.tell(codes[sl], fit)
        if not self._asked_seeds and self.seeds is not None:
            self._asked_seeds = True
            ns, a = len(self.seeds), len(self.bands) * k
            s_codes = codes[a:a + ns]
            s_fit_base = stretch[a:a + ns] / max(self.scale, 1e-12)
            dev = np.abs(rates[a:].reshape(self.repeats, ns).mean(axis=0) - ref) / ref
            for j, w in enumerate(self.weights):
                fit = s_fit_base - w * dev
                best = int(np.argmax(fit))
                if fit[best] > 0.0:  # better than the band's start, the reference (stretch 0, no change)
                    self.bands[j] = make_optimizer("sepcma", s_codes[best], self.sigma0, self.per_band,
                                                   seed=self.bands[j].seed + 1)

    @property
    def wants_restart(self) -> bool:
        at = getattr(self, "restart_at", 0)  # (states stored before restarts existed)
        return at > 0 and self.generation == at and self.active

    def restart_from(self, codes: np.ndarray, stretch: np.ndarray, change: np.ndarray) -> None:
        """Restart each band from the candidate that scores best for it by confirmed (re-tested, conservative)
        estimates: ``change`` is |r - r_ref| / r_ref plus its standard errors. A seed's single first
        measurement is a lottery under spike noise (a relative error of ~0.4 at 20 Hz in a short window);
        by now the confirmation's re-tests have measured the far seeds several times."""
        if len(codes) == 0:
            return
        stretch = np.asarray(stretch, dtype=np.float64)
        scale = max(self.scale, float(stretch.max()), 1e-12)
        for j, w in enumerate(self.weights):
            fit = stretch / scale - w * np.asarray(change, dtype=np.float64)
            best = int(np.argmax(fit))
            if fit[best] > 0.0:
                self.bands[j] = make_optimizer("sepcma", np.asarray(codes[best], dtype=np.float64), self.sigma0,
                                               self.per_band, seed=self.bands[j].seed + 2)

    # -- persistence: cmaes drops its random state on pickling, so bands travel as their own snapshots
    def __getstate__(self):
        d = dict(self.__dict__)
        d["bands"] = [b.state() for b in self.bands]
        return d

    def __setstate__(self, d):
        d = dict(d)
        d["bands"] = [Optimizer.restore(b) for b in d["bands"]]
        self.__dict__.update(d)


def _shrunk(rates: np.ndarray, dispersion: float) -> np.ndarray:
    """Rates pulled towards their generation's mean by the noise's share of their spread (empirical Bayes)."""
    if dispersion <= 0 or len(rates) < 2:
        return rates
    m = float(rates.mean())
    noise = dispersion * max(m, 1e-9)
    true_var = max(float(rates.var()) - noise, 1e-3 * max(m, 1e-6) ** 2)
    return m + (rates - m) * true_var / (true_var + noise)
