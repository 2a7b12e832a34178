"""One place that builds a probe from its config: generator, subject, stages, reference, initial code and
search. In-silico runs, stored sessions (resume, replay) and the live service all build through here, so the
same config and seed give the same search everywhere.

Reference images from files are resized to the generator's image size with Pillow's bilinear filter (with
its antialiasing when shrinking), the same for every caller; a live session stores the reference's code when
the generator can encode it and otherwise its file path, so a restart or a replay reloads the same image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ProbeConfig
from .engine.base import ConfigError, ImageGenerator, SeedStreams, Subject
from .engine.confirm import FrontConfirmation
from .engine.evaluation import pink_noise_images
from .engine.far_reach import FarReach, band_weights
from .engine.generators import make_generator
from .engine.optimizers import make_optimizer
from .engine.probes import Bound, EarlyStop, Probe
from .engine.search import SnSSearch
from .engine.stages import make_stage
from .engine.subjects import make_subject


def build_generator(config: ProbeConfig) -> ImageGenerator:
    return make_generator(config.generator.name, **config.generator.params)


def build_subject(config: ProbeConfig, generator: ImageGenerator) -> Subject:
    params = dict(config.subject.params)
    if config.subject.name != "cnn-unit":  # (a python factory gets image_size only if it takes one)
        params.setdefault("image_size", generator.image_shape[0])
    return make_subject(config.subject.name, **params)


def build_stages(config: ProbeConfig, make=make_stage) -> dict:
    keys = [s.key for s in config.stages]
    if len(set(keys)) != len(keys):
        raise ConfigError("stages", "two stages share a name; give one a distinct 'label'")
    return {s.key: make(s.name, **s.params) for s in config.stages}


def build_search(
    config: ProbeConfig,
    generator: ImageGenerator,
    stages: dict,
    *,
    mode: str | None = None,
    generations: int | None = None,
    reference_code: np.ndarray | None = None,
    reference_image: np.ndarray | None = None,
    natural_threshold: float | None = None,
) -> SnSSearch:
    """The search of one phase, every random stream derived from the session seed (also used live)."""
    streams = SeedStreams(config.seed)
    mode = mode or config.mode
    phase_seed = streams.seed("maximize" if mode == "maximize" else "probe")
    n = generator.code_size
    x0 = np.zeros(n) if mode == "maximize" else initial_code(mode, reference_code, n, streams.rng("x0"),
                                                              config.start_from)
    # A probe's reference search has its own optimizer settings: a probe's small steps (an adversarial
    # search from the reference) would keep the maximize run at baseline under spike noise.
    oc = config.maximize.optimizer if mode == "maximize" and config.mode != "maximize" else config.optimizer
    options = dict(oc.params)
    if oc.name == "shell":  # the adversarial search aims at the probe's own target change
        options.setdefault("target_change", config.target_change)
    opt = make_optimizer(oc.name, x0, oc.sigma0, config.population, seed=phase_seed, **options)
    if mode == "maximize":
        probe = Probe("maximize", ())
    else:
        bounds = tuple(Bound.parse(k, v) for k, v in config.bounds.items())
        probe = Probe(mode, tuple(stages), config.ordering or "", bounds)
    early = None
    if natural_threshold is not None and mode != "maximize":
        early = EarlyStop(mode, natural_threshold, config.early_stop.min_generation)
    confirmation = None
    if mode != "maximize" and config.confirm:
        confirmation = FrontConfirmation(mode, config.retests, config.confirm_kappa)
    far = None
    if mode == "invariance" and config.far_reach and reference_code is not None:
        far = FarReach.for_reference(generator, reference_code, reference_image, per_band=config.far_population,
                                     weights=band_weights(config.far_reach), sigma0=config.far_sigma0,
                                     seed=phase_seed, generations=config.far_generations,
                                     restart_at=config.far_restart, affine=config.far_restart > 0,
                                     seed_repeats=config.far_seed_repeats)
    search = SnSSearch(generator, stages if mode != "maximize" else {}, probe, opt, seed=phase_seed,
                       reference_image=reference_image if mode != "maximize" else None,
                       max_generations=generations or config.generations, early_stop=early,
                       confirmation=confirmation, far_reach=far)
    search.reference_code = reference_code
    return search


def initial_code(mode: str, reference_code: np.ndarray | None, n: int, rng: np.random.Generator,
                  start_from: str = "noise") -> np.ndarray:
    """Adversarial probes start at the reference code; invariance probes at small noise (as the published
    method) or, with ``start_from = "reference"``, at the reference code too."""
    if mode == "adversarial" or start_from == "reference":
        if reference_code is None:
            raise ConfigError("reference", f"the {mode} probe starts at the reference code; "
                              "this generator cannot encode an image", "source = 'maximize' or 'code'")
        return reference_code.copy()
    s = np.sqrt(0.01 * abs(reference_code.mean())) if reference_code is not None else 0.0
    return rng.normal(0.0, s, n) if s > 0 else np.zeros(n)


def natural_threshold(config: ProbeConfig, generator: ImageGenerator, subject: Subject) -> float | None:
    """The early-stopping threshold: max (invariance) or min (adversarial) response to natural-like images."""
    if not config.early_stop.enabled or config.mode == "maximize":
        return None
    rng = SeedStreams(config.seed).rng("natural")
    r = subject.rate(pink_noise_images(config.early_stop.natural_images, generator.image_shape, rng)).mean(1)
    return float(r.max() if config.mode == "invariance" else r.min())


def load_reference(source: str, path, generator: ImageGenerator) -> tuple[np.ndarray | None, np.ndarray]:
    """The reference as (code or None, image): ``source`` "code" reads a .npy code and renders it; "image"
    reads a picture, resizes it bilinearly to the generator's size and encodes it when the generator can."""
    if path is None:
        raise ConfigError("reference.path", f"required when reference.source = {source!r}")
    if not Path(path).is_file():
        raise ConfigError("reference.path", f"file not found: {path}")
    if source == "code":
        try:
            raw = np.load(path)
        except (OSError, ValueError) as exc:
            raise ConfigError("reference.path", f"{path} is not a .npy code file ({exc})") from None
        code = generator.check_codes(np.asarray(raw, dtype=np.float64).ravel())[0]
        return code, generator.render(code[None])[0]
    img = read_image(path, generator.image_shape[:2])
    try:
        code = generator.encode(img[None])[0]
    except NotImplementedError:
        code = None
    return code, img


def read_image(path, size: tuple[int, int]) -> np.ndarray:
    """An image file as float32 (H, W, 3) in [0, 1], resized to ``size`` = (H, W) with Pillow's bilinear."""
    from PIL import Image, UnidentifiedImageError

    h, w = size
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((w, h), Image.BILINEAR)
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError("reference.path", f"{path} is not an image Pillow can read ({exc})") from None
    return np.asarray(rgb, dtype=np.float32) / 255.0
