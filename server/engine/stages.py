"""Representation stages: the upstream spaces in which distances to the reference image are measured.

- ``pixel``: the raw image (optionally bilinearly resized, like the reference's 224x224), flattened;
- ``gabor-energy``: a fixed, weight-free V1-like bank of quadrature Gabor energies;
- ``cnn``: one layer of a torchvision model (or any torch module), read with a forward hook.

torch is imported only when a CNN stage is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import fft as sfft

from server.engine.base import ConfigError, Stage
from server.engine import torchpaths
from server.engine.imaging import check_state_dict, load_state_dict_file, pick_device, resize
from snslab_common.gabor import gabor_pair
from snslab_common.imaging import as_image_batch, grey, positive
from snslab_common.registry import make_from_registry


class PixelStage(Stage):
    """The image in [0, 1], optionally bilinearly resized to size x size (torch ``interpolate``,
    ``align_corners=False``, no antialias: the reference's pixel stage uses size=224), flattened (H, W, 3)."""

    name = "pixel"

    def __init__(self, size: int | None = None):
        self.size = None if size is None else positive(size, "stage.size", integer=True)

    def features(self, images: np.ndarray) -> np.ndarray:
        x = as_image_batch(images).astype(np.float32, copy=False)
        if self.size is not None:
            x = resize(x, self.size, antialias=False)
        return x.reshape(x.shape[0], -1)


class GaborEnergyStage(Stage):
    """A fixed bank of quadrature Gabor pairs on the grey image; feature = sqrt(even^2 + odd^2).

    >>> import numpy as np
    >>> from snslab_common.gabor import grating, to_rgb
    >>> stage = GaborEnergyStage(orientations=8, wavelengths=(4, 8, 16), stride=4, size=64)
    >>> imgs = to_rgb(np.stack([grating(64, 0.0, 8.0, phase) for phase in (0.0, 1.5)]))
    >>> stage.features(imgs).shape                  # 8 orientations x 3 wavelengths x 16 x 16 positions
    (2, 6144)
    >>> r = stage.responses(imgs)[:, 1, 4:12, 4:12]  # orientation 0, wavelength 8, interior positions
    >>> bool(np.allclose(np.abs(r[0]), np.abs(r[1]), rtol=0.02))  # energy ignores the grating's phase
    True

    The grey image (mean of RGB, minus 0.5) is resized to ``size`` x ``size`` (antialiased bilinear), filtered
    by ``orientations`` evenly spaced orientations x ``wavelengths`` (pixels at the working size; envelope
    sigma = ``sigma_ratio`` * wavelength) and sampled on a grid with ``stride`` (first position stride // 2).
    Filtering is FFT correlation with zero padding (outside the image counts as mid-grey), all filters at once.
    Features are ordered (orientation, wavelength, row, col).
    """

    name = "gabor-energy"

    def __init__(
        self,
        orientations: int = 8,
        wavelengths: Sequence[float] = (4.0, 8.0, 16.0),
        stride: int = 4,
        size: int = 64,
        sigma_ratio: float = 0.5,
    ):
        self.orientations = positive(orientations, "stage.orientations", integer=True)
        if isinstance(wavelengths, (int, float)):
            wavelengths = (wavelengths,)
        if not isinstance(wavelengths, (list, tuple)) or not wavelengths:
            raise ConfigError("stage.wavelengths", f"bad value {wavelengths!r}", "a list of positive numbers")
        self.wavelengths = tuple(positive(w, "stage.wavelengths") for w in wavelengths)
        if min(self.wavelengths) < 2.0:
            raise ConfigError("stage.wavelengths", "wavelengths below 2 pixels alias", "numbers >= 2")
        self.size = positive(size, "stage.size", integer=True)
        self.stride = positive(stride, "stage.stride", integer=True)
        self.sigma_ratio = positive(sigma_ratio, "stage.sigma_ratio")

        half = max(int(np.ceil(3.0 * self.sigma_ratio * w)) for w in self.wavelengths)
        k = 2 * half + 1
        self._half = half
        s = self.stride
        # FFT size: a multiple of the stride (for spectrum folding below) with room for zero padding
        self._q = sfft.next_fast_len(-(-(self.size + k - 1) // s))
        self._pad = pad = self._q * s
        thetas = np.arange(self.orientations) * 180.0 / self.orientations
        kernels = []
        for theta in thetas:
            for wl in self.wavelengths:
                g0, g90 = gabor_pair(k, None, theta, wl, self.sigma_ratio * wl)
                kernels.append(g0 + 1j * g90)
        kern = np.zeros((len(kernels), pad, pad), dtype=np.complex128)
        kern[:, :k, :k] = np.array(kernels)
        # Correlation with a complex kernel K: out[m] = sum_i img[i + m] K[i], spectrum F(img) * conj(F(conj K)).
        # out[m] is the filter centred on pixel m + half. We only need m = o + s*n (the position grid), so the
        # spectrum is multiplied by exp(2 pi i k o / pad), folded to (q, q) and inverted there: a stride-s
        # subsampled inverse DFT at 1/s^2 of the cost.
        self.positions = np.arange(s // 2, self.size, s)
        m0 = (s // 2 - half) % pad
        o = m0 % s
        ramp = np.exp(2j * np.pi * np.arange(pad) * o / pad)
        spec = np.conj(sfft.fft2(np.conj(kern))) * ramp[:, None] * ramp[None, :] / (s * s)
        # laid out (q*q, s*s, F) so folding + filtering is one batched matrix product per image chunk
        spec = spec.reshape(len(kernels), s, self._q, s, self._q).transpose(2, 4, 1, 3, 0)
        self._spec = np.ascontiguousarray(spec.reshape(self._q**2, s * s, len(kernels)).astype(np.complex64))
        self._idx = (m0 // s + np.arange(len(self.positions))) % self._q
        self.n_filters = len(kernels)
        self.n_features = self.n_filters * len(self.positions) ** 2

    def responses(self, images: np.ndarray) -> np.ndarray:
        """Complex filter outputs (B, F, P, P) on the position grid: real = even (cosine), imag = odd (sine)."""
        x = as_image_batch(images)
        g = grey(x)[..., None]
        if g.shape[1:3] != (self.size, self.size):
            g = resize(g, self.size, antialias=True)
        dx = (g[..., 0] - 0.5).astype(np.float32)
        s, q, idx = self.stride, self._q, self._idx
        res = np.empty((dx.shape[0], self.n_filters, len(idx), len(idx)), dtype=np.complex64)
        for start in range(0, dx.shape[0], 64):  # chunks bound the spectra to tens of MB
            spec = sfft.fft2(dx[start : start + 64], s=(self._pad, self._pad), workers=-1)
            b = spec.shape[0]
            spec = spec.reshape(b, s, q, s, q).transpose(2, 4, 0, 1, 3).reshape(q * q, b, s * s)
            if s == 1:  # nothing to fold: a broadcast product beats tiny matrix products
                z = spec * self._spec
            else:
                z = np.matmul(spec, self._spec)  # (q*q, b, F): filter and fold in one go
            z = z.reshape(q, q, b, self.n_filters).transpose(2, 3, 0, 1)
            out = sfft.ifft2(z, workers=-1)
            res[start : start + b] = out[:, :, idx][:, :, :, idx]
        return res

    def features(self, images: np.ndarray) -> np.ndarray:
        r = self.responses(images)
        return np.abs(r).reshape(r.shape[0], -1).astype(np.float32)


# -------------------------------------------------------------------------------------------------- CNN
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _StopForward(Exception):
    """Raised by the hook once the read layer has run, so later layers are not computed."""


def torchvision_models() -> list[str]:
    """Names of torchvision's classification models (what ``architecture`` accepts)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _names_hint(names: list[str], n: int = 10) -> str:
    head = ", ".join(names[:n])
    return head + (f", ... ({len(names)} in all)" if len(names) > n else "")


class CNNStage(Stage):
    """Activations of one layer of a CNN, flattened to (B, d) float32.

    The network is a torchvision model built with ``weights=None`` (nothing is ever downloaded) and then loaded
    from ``weights`` if given, or a user's ``module``. Without a weights file the random initialisation is
    seeded by ``seed`` (torch's global RNG state is saved and restored). ``layer`` is a dotted name from
    ``model.named_modules()``; the output of its *first* call in the forward pass is read by a hook that then
    stops the pass. Images are resized to ``input_size`` (antialiased bilinear) and normalised with
    ``normalize`` ("imagenet", None, or (mean, std)), on the stage's device.

    ``device`` "auto" picks CUDA when present; ``precision`` and the CUDA-only speed-ups (channels-last,
    batches of 256, pinned uploads, a warm-up at construction) are described in server/engine/torchpaths.py;
    on the CPU in fp32 (the default there) results are exactly those of the plain eager path.
    """

    name = "cnn"

    def __init__(
        self,
        architecture: str | None = None,
        layer: str | None = None,
        weights: str | Path | None = None,
        module: Any = None,
        input_size: int | None = 224,
        normalize: str | tuple | None = "imagenet",
        device: str = "auto",
        batch_size: int | None = None,
        seed: int = 0,
        precision: str = "auto",
        _field: str = "stage",
    ):
        import torch

        f = _field
        if (architecture is None) == (module is None):
            raise ConfigError(
                f"{f}.architecture",
                "give exactly one of architecture (a torchvision model name) or module (a torch.nn.Module)",
            )
        if module is not None and not isinstance(module, torch.nn.Module):
            raise ConfigError(f"{f}.module", f"not a torch.nn.Module: {type(module).__name__}")
        self.device = pick_device(device, f"{f}.device")
        self.precision = torchpaths.pick_precision(precision, self.device, f"{f}.precision")
        self.batch_size = torchpaths.pick_batch(batch_size, self.device, 64, f"{f}.batch_size")
        self.input_size = None if input_size is None else positive(input_size, f"{f}.input_size", integer=True)
        if normalize == "imagenet":
            normalize = (IMAGENET_MEAN, IMAGENET_STD)
        if normalize is not None:
            try:
                mean, std = (np.asarray(v, dtype=np.float32).reshape(3) for v in normalize)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"{f}.normalize", f"bad value {normalize!r}", '"imagenet", null or [mean3, std3]'
                ) from exc
            if np.any(std <= 0):
                raise ConfigError(f"{f}.normalize", "std must be positive", '"imagenet", null or [mean3, std3]')
            self._mean = torch.tensor(mean).reshape(1, 3, 1, 1).to(self.device)
            self._std = torch.tensor(std).reshape(1, 3, 1, 1).to(self.device)
        else:
            self._mean = self._std = None

        if architecture is not None:
            names = torchvision_models()
            if architecture not in names:
                raise ConfigError(
                    f"{f}.architecture", f"unknown torchvision model {architecture!r}", _names_hint(names, 12)
                )
            import torchvision

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = torchvision.models.get_model(architecture, weights=None)
            self.architecture = architecture
        else:
            model = module
            self.architecture = type(module).__name__

        if weights is not None:
            sd = load_state_dict_file(weights, f"{f}.weights")
            # batch-norm step counters are bookkeeping that many exported files omit
            expected = {
                k: tuple(v.shape)
                for k, v in model.state_dict().items()
                if k in sd or not k.endswith("num_batches_tracked")
            }
            check_state_dict(expected, sd, f"{f}.weights")
            model.load_state_dict(sd, strict=False)

        modules = dict(model.named_modules())
        valid = [n for n in modules if n]
        if not isinstance(layer, str) or layer not in valid:
            raise ConfigError(f"{f}.layer", f"no layer {layer!r} in {self.architecture}", _names_hint(valid))
        self.layer = layer
        self.model = torchpaths.prepare_module(model, self.device, self.precision)
        self._target = modules[layer]
        self._shape: tuple[int, ...] | None = None
        if self.device == "cuda":
            self.warmup()

    def warmup(self, n: int | None = None) -> None:
        """One forward pass of ``n`` grey images (default: a full batch), outside any timed path."""
        side = self.input_size or 224
        n = n or self.batch_size
        torchpaths.warm_up(lambda: self.activations(np.full((n, side, side, 3), 0.5, np.float32)), self.device)

    def _prepare(self, x_np: np.ndarray):
        import torch
        import torch.nn.functional as F

        x = torchpaths.upload(x_np, self.device, torch.float32).permute(0, 3, 1, 2)
        if self.input_size is not None and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        return torchpaths.to_layout(x, self.device, self.precision)

    def _run(self, x):
        """Forward until the hooked layer; returns its output tensor (B, ...)."""
        captured = []

        def hook(_module, _inputs, output):
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)
            raise _StopForward

        handle = self._target.register_forward_hook(hook)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"layer {self.layer!r} was not called in the forward pass of {self.architecture}")
        return captured[0]

    def _pass(self, x: np.ndarray) -> np.ndarray:
        """One forward pass of at most ``batch_size`` images: the layer output as float32 numpy."""
        with torchpaths.compute(self.device, self.precision):
            return self._run(self._prepare(x)).detach().float().cpu().numpy()

    def activations(self, images: np.ndarray):
        """Unflattened layer output as a float32 numpy array (B, *feature_shape)."""
        x = as_image_batch(images)
        acts = np.concatenate([self._pass(x[start : start + self.batch_size])
                               for start in range(0, x.shape[0], self.batch_size)], axis=0)
        self._shape = acts.shape[1:]
        return acts

    def features(self, images: np.ndarray) -> np.ndarray:
        a = self.activations(images)
        return a.reshape(a.shape[0], -1)

    def features_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """``features`` of several callers' batches in shared passes (probes run together). On the CPU in fp32
        each caller's rows come out bit for bit as from its own ``features`` call (torchpaths.pack_passes)."""
        xs = [as_image_batch(b) for b in batches]
        exact = torchpaths.exact_pass_min(self.device, self.precision, 2)
        return torchpaths.run_passes(lambda x: self._pass(x).reshape(len(x), -1), xs, self.batch_size, exact)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one image's layer output, e.g. (C, H, W); probed with a grey image when not yet known."""
        if self._shape is None:
            side = self.input_size or 224
            self.activations(np.full((1, side, side, 3), 0.5, dtype=np.float32))
        return tuple(self._shape)


STAGES: dict[str, type[Stage]] = {
    "pixel": PixelStage,
    "gabor-energy": GaborEnergyStage,
    "cnn": CNNStage,
}


def make_stage(name: str, **params: Any) -> Stage:
    """Build a registered stage; unknown names or parameters -> ConfigError ("stage[.param]")."""
    return make_from_registry("stage", STAGES, name, params)
