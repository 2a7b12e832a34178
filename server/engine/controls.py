"""Controls for a probe's answer, and the probe's claim against them (noise-free, as the paper reports).

A probe's image is only interesting if simpler changes of the reference at the same pixel distance do not do
as well. Three control families, each a path of images moving away from the reference:

- contrast: m + c * (ref - m) for c from 1 down to 0, m the reference's mean luminance (mean over pixels and
  channels), ending at a uniform mean-grey image;
- noise: ref + e, e Gaussian noise (seeded) scaled so that the clipped image is at exactly the wanted pixel
  distance (``noise_draws`` draws per distance, retention averaged);
- affine: the reference's rotations, translations and scalings (server.engine.affine), padded with black
  (fill 0, torchvision's default as in the published code); each has one fixed stretch.

Stretch is pixel distance / max_pix_dist; retention r(x) / r(ref). A probe that stretches another stage
(e.g. Gabor energy) is compared where it stretched: every image's stretch is then its feature distance from
the reference in that stage / the reference's feature norm, and the noise and contrast controls at the
probe's stretch are interpolated along their paths. Claims:
- invariance, "farther than every control at equal retention": the probe's image keeps the response
  (|retention - 1| <= tolerance, two-sided) and its stretch exceeds the farthest stretch at which every
  control still keeps it (contrast and noise: the first point of their path that leaves the band);
- adversarial, "larger change than every control at equal stretch": |1 - retention| of the probe's image
  exceeds that of contrast and noise at the probe's stretch and of every affine control no farther than it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .affine import affine_controls
from .base import Subject
from .evaluation import max_pixel_distance
from .probes import stage_distances

AFFINE_FILL = 0.0
PADDING = "affine controls are padded with black (0.0), as torchvision's defaults in the published code"


def _rates(subject: Subject, images: np.ndarray) -> np.ndarray:
    return subject.rate(np.asarray(images, dtype=np.float32)).mean(axis=1)


def contrast_path(reference: np.ndarray, factors: np.ndarray) -> np.ndarray:
    ref = np.asarray(reference, dtype=np.float64)
    m = ref.mean()
    return np.stack([m + c * (ref - m) for c in factors]).astype(np.float32)


def noise_at(reference: np.ndarray, distance: float, rng: np.random.Generator, draws: int) -> np.ndarray:
    """``draws`` images ref + e, clipped to [0, 1], each at pixel distance ``distance`` (or as far as clipping
    lets that noise direction go)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = []
    for _ in range(draws):
        e = rng.standard_normal(ref.shape)
        e /= np.linalg.norm(e)
        lo, hi = 0.0, distance
        while np.linalg.norm(np.clip(ref + hi * e, 0, 1) - ref) < distance and hi < 1e3 * max(distance, 1e-6):
            lo, hi = hi, 2 * hi
        for _ in range(40):  # bisection on the scale: the clipped distance grows monotonically with it
            mid = 0.5 * (lo + hi)
            if np.linalg.norm(np.clip(ref + mid * e, 0, 1) - ref) < distance:
                lo = mid
            else:
                hi = mid
        out.append(np.clip(ref + hi * e, 0, 1))
    return np.stack(out).astype(np.float32)


def _first_exit(stretch: np.ndarray, keep: np.ndarray) -> float:
    """The farthest stretch of a path (in the order it moves away) before its first point outside the band."""
    out = 0.0
    for s, k in zip(stretch, keep):
        if not k:
            break
        out = max(out, float(s))
    return out


def control_table(subject: Subject, reference: np.ndarray, image: np.ndarray, mode: str, *,
                  tolerance: float = 0.1, target_change: float = 0.5, seed: int = 0, steps: int = 41,
                  noise_draws: int = 4, stage=None, stage_name: str = "pixel") -> dict[str, Any]:
    """Every control beside the probe's image, and whether the probe's claim holds (see the module doc).
    ``stage``: the probe's stretch stage (``features(images)``), None for pixels."""
    ref = np.asarray(reference, dtype=np.float32)
    img = np.asarray(image, dtype=np.float32)
    mpd = max_pixel_distance(ref)
    rng = np.random.default_rng([int(seed), 0xC7])
    r_ref = float(_rates(subject, ref[None])[0])
    scale = r_ref if r_ref > 0 else 1e-12

    def retention(images):
        return _rates(subject, images) / scale

    def stretch_of(images):
        return np.linalg.norm((images.astype(np.float64) - ref[None]).reshape(len(images), -1), axis=1) / mpd

    if stage is not None:
        f_ref = np.asarray(stage.features(ref[None])[0], dtype=np.float64)
        f_norm = max(float(np.linalg.norm(f_ref)), 1e-12)

        def stretch_of(images):  # noqa: F811  (the probe's own stage)
            return stage_distances(stage.features(np.asarray(images, dtype=np.float32)), f_ref) / f_norm

    probe_ret = float(retention(img[None])[0])
    probe_stretch = float(stretch_of(img[None])[0])
    probe_change = abs(1.0 - probe_ret)

    factors = np.linspace(1.0, 0.0, steps)
    c_imgs = contrast_path(ref, factors)
    c_ret, c_str = retention(c_imgs), stretch_of(c_imgs)
    n_levels = np.linspace(0.0, 1.0, steps)[1:]
    n_ret, n_str = [], []
    for lev in n_levels:
        imgs = noise_at(ref, lev * mpd, rng, noise_draws)
        n_ret.append(float(retention(imgs).mean()))
        n_str.append(float(stretch_of(imgs).mean()))
    n_ret, n_str = np.array([1.0] + n_ret), np.array([0.0] + n_str)
    labels, a_imgs = zip(*affine_controls(ref, fill=AFFINE_FILL))
    a_imgs = np.stack(a_imgs)
    a_ret, a_str = retention(a_imgs), stretch_of(a_imgs)
    affine = [{"control": lab, "retention": float(r), "stretch": float(s)} for lab, r, s in zip(labels, a_ret, a_str)]

    # The contrast and noise controls at exactly the probe's stretch (contrast: as far as it goes).
    if stage is None:
        c_at = min(probe_stretch, float(c_str[-1]))
        c_factor = 1.0 - c_at / c_str[-1] if c_str[-1] > 0 else 1.0
        n_pixels = probe_stretch * mpd
    else:  # along each path, where its (running farthest) stage stretch reaches the probe's
        c_factor = float(np.interp(probe_stretch, np.maximum.accumulate(c_str), factors))
        n_pixels = float(np.interp(probe_stretch, np.maximum.accumulate(n_str), np.r_[0.0, n_levels] * mpd))
    c_img = contrast_path(ref, np.array([c_factor]))
    c_at_ret = float(retention(c_img)[0])
    if stage is not None:
        c_at = float(stretch_of(c_img)[0])
    n_imgs = noise_at(ref, n_pixels, rng, noise_draws)
    n_at_ret = float(retention(n_imgs).mean())

    out: dict[str, Any] = {
        "mode": mode,
        "padding": PADDING,
        "stretch_stage": stage_name if stage is not None else "pixel",
        "probe": {"retention": probe_ret, "stretch": probe_stretch, "change": probe_change},
        "curves": {
            "contrast": {"stretch": c_str.tolist(), "retention": c_ret.tolist()},
            "noise": {"stretch": n_str.tolist(), "retention": n_ret.tolist()},
        },
        "affine": affine,
    }
    at_stretch = {
        "contrast": {"stretch": c_at, "retention": c_at_ret, "change": abs(1 - c_at_ret)},
        "noise": {"stretch": float(stretch_of(n_imgs).mean()), "retention": n_at_ret, "change": abs(1 - n_at_ret)},
    }
    if mode == "invariance":
        band = lambda r: np.abs(np.asarray(r) - 1.0) <= tolerance  # noqa: E731
        kept_affine = [a["stretch"] for a in affine if abs(a["retention"] - 1.0) <= tolerance]
        farthest = {
            "contrast": _first_exit(c_str, band(c_ret)),
            "noise": _first_exit(n_str, band(n_ret)),
            "affine": max(kept_affine, default=0.0),
        }
        keeps = bool(abs(probe_ret - 1.0) <= tolerance)
        out.update(
            claim="farther than every control at equal retention",
            tolerance=tolerance,
            at_probe_stretch=at_stretch,
            farthest_kept=farthest,
            beats={k: bool(keeps and probe_stretch > v) for k, v in farthest.items()},
        )
    else:
        near_affine = [a for a in affine if a["stretch"] <= probe_stretch + 1e-12]
        best_affine = max((abs(1 - a["retention"]) for a in near_affine), default=0.0)
        at_stretch["affine"] = {"stretch": probe_stretch, "change": best_affine,
                                "controls": len(near_affine)}
        wanted = max(probe_change, 1e-12)
        reach = np.flatnonzero(np.abs(1.0 - c_ret) >= wanted)
        c_needed = float(c_str[reach[0]]) if reach.size else None
        out.update(
            claim="larger change than every control at equal stretch",
            target_change=target_change,
            reached_target=bool(probe_change >= target_change),
            at_probe_stretch=at_stretch,
            contrast_stretch_for_probe_change=c_needed,
            contrast_to_probe_stretch_ratio=(c_needed / probe_stretch if c_needed is not None and probe_stretch > 0
                                             else None),
            beats={k: bool(probe_change > v["change"]) for k, v in at_stretch.items()},
        )
    out["claim_holds"] = bool(all(out["beats"].values()))
    return out
