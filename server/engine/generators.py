"""Image generators: latent codes -> images.

- ``dct``: x = clip(0.5 + scale * W z) with W the lowest-frequency part of an orthonormal 2-D DCT basis. Exact
  maths is possible (W^T W = I), so model-neuron benchmarks can compute true fronts.
- ``pixel``: the code is the image itself.
- ``deepsim-fc6`` / ``deepsim-fc7``: the DeePSiM generator (Dosovitskiy & Brox 2016) the reference uses, in
  torch (imported only when one is built), loading converted weight files.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from server.engine import torchpaths
from server.engine.base import ConfigError, ImageGenerator
from server.engine.imaging import check_state_dict, load_state_dict_file, pick_device
from snslab_common.imaging import as_image_batch, positive, size2
from snslab_common.registry import make_from_registry


@lru_cache(maxsize=16)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix D (n, n): row k is the k-th basis function, D @ D.T = I."""
    i = np.arange(n)
    d = np.cos(np.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    d.setflags(write=False)
    return d


class DCTGenerator(ImageGenerator):
    """x = clip(0.5 + scale * W z, 0, 1): z holds the lowest-frequency orthonormal DCT-II coefficients.

    >>> import numpy as np
    >>> gen = DCTGenerator(code_size=4096, image_size=64, channels=1, scale=0.25, ball_radius=64)
    >>> z = gen.project(np.random.default_rng(0).normal(size=(50, 4096)))
    >>> images = gen.render(z)                      # (50, 64, 64, 3) float32 in [0, 1]
    >>> images.shape, float(np.linalg.norm(z, axis=1).max()) <= 64 + 1e-9
    ((50, 64, 64, 3), True)
    >>> small = 0.01 * z[:2]                        # no pixel clips: encoding is exact
    >>> bool(np.allclose(gen.encode(gen.unclipped(small)), small))
    True

    Coefficients are ordered by (u + v, u, v, channel) (u = vertical, v = horizontal frequency) and the first
    ``code_size`` are kept, so the DC terms come first. ``channels=1`` renders a grey image replicated to RGB
    (then W is orthonormal in grey space and the RGB pixel distance is sqrt(3) * scale * ||dz||);
    ``channels=3`` renders RGB (W orthonormal in RGB space: pixel distance = scale * ||dz|| when unclipped).
    Rendering is two small matrix products on (B, C, U, V) coefficient grids.
    """

    name = "dct"

    def __init__(
        self,
        code_size: int = 4096,
        image_size: int | tuple[int, int] = 64,
        channels: int = 3,
        scale: float = 0.25,
        ball_radius: float | None = None,
    ):
        self.height, self.width = size2(image_size, "generator.image_size")
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ConfigError("generator.channels", f"bad value {channels!r}", [1, 3])
        self.channels = int(channels)
        full = self.height * self.width * self.channels
        code_size = positive(code_size, "generator.code_size", integer=True)
        if code_size > full:
            raise ConfigError(
                "generator.code_size",
                f"{code_size} exceeds H*W*channels = {self.height}*{self.width}*{self.channels} = {full}",
                f"1..{full}",
            )
        self.code_size = code_size
        self.scale = positive(scale, "generator.scale")
        self.ball_radius = None if ball_radius is None else positive(ball_radius, "generator.ball_radius")
        self.image_shape = (self.height, self.width, 3)

        u, v, c = np.meshgrid(
            np.arange(self.height), np.arange(self.width), np.arange(self.channels), indexing="ij"
        )
        u, v, c = u.ravel(), v.ravel(), c.ravel()
        order = np.lexsort((c, v, u, u + v))[:code_size]  # last key is the primary one
        self._u, self._v, self._c = u[order], v[order], c[order]
        self._nu = int(self._u.max()) + 1
        self._nv = int(self._v.max()) + 1
        self._dh = np.ascontiguousarray(dct_matrix(self.height)[: self._nu])  # (U, H)
        self._dw = np.ascontiguousarray(dct_matrix(self.width)[: self._nv])  # (V, W)
        self._flat = (self._c * self._nu + self._u) * self._nv + self._v  # index into a (C, U, V) grid
        self._dh32, self._dw32 = self._dh.astype(np.float32), self._dw.astype(np.float32)

    @property
    def basis_index(self) -> np.ndarray:
        """(n, 3) int array: (u, v, channel) of each code entry, in code order."""
        return np.stack([self._u, self._v, self._c], axis=1)

    def _synthesis(self, codes: np.ndarray, dtype=np.float64) -> np.ndarray:
        """W z as a (B, H, W, C) view (C = channels), computed in ``dtype``."""
        b = codes.shape[0]
        dh, dw = (self._dh, self._dw) if dtype == np.float64 else (self._dh32, self._dw32)
        grid = np.zeros((b, self.channels, self._nu, self._nv), dtype=dtype)
        grid.reshape(b, -1)[:, self._flat] = codes
        y = np.matmul(dh.T, grid @ dw)  # (H, U) @ (B, C, U, W) -> (B, C, H, W)
        return y.transpose(0, 2, 3, 1)

    def unclipped(self, codes: np.ndarray) -> np.ndarray:
        """0.5 + scale * W z as float64 (B, H, W, 3), without clipping (for exact maths)."""
        x = 0.5 + self.scale * self._synthesis(self.check_codes(codes))
        return np.repeat(x, 3, axis=-1) if self.channels == 1 else x

    def render(self, codes: np.ndarray) -> np.ndarray:
        # float32 throughout: half the memory traffic of float64, errors ~1e-7 (images are float32 anyway)
        x = self._synthesis(self.check_codes(codes), np.float32)
        x *= np.float32(self.scale)
        x += np.float32(0.5)
        np.clip(x, 0.0, 1.0, out=x)
        if self.channels == 1:
            return np.repeat(x, 3, axis=-1)
        return np.ascontiguousarray(x)

    def coefficients(self, pixels: np.ndarray) -> np.ndarray:
        """W^T p for (B, H, W, C) pixel grids (C = channels; grey (B, H, W) accepted when channels=1)."""
        p = np.asarray(pixels, dtype=np.float64)
        if self.channels == 1 and p.ndim == 3:
            p = p[..., None]
        if p.ndim == 3:
            p = p[None]
        if p.shape[1:] != (self.height, self.width, self.channels):
            raise ConfigError(
                "images",
                f"expected pixel grids of shape (B, {self.height}, {self.width}, {self.channels}), got {p.shape}",
            )
        b = p.shape[0]
        t = p.transpose(0, 3, 1, 2).reshape(-1, self.width) @ self._dw.T  # (B*C*H, V)
        t = t.reshape(b, self.channels, self.height, self._nv).transpose(0, 1, 3, 2)  # (B, C, V, H)
        g = t.reshape(-1, self.height) @ self._dh.T  # (B*C*V, U)
        g = g.reshape(b, self.channels, self._nv, self._nu).transpose(0, 1, 3, 2)  # (B, C, U, V)
        return g.reshape(b, -1)[:, self._flat]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Least-squares code of RGB images: ((x - 0.5) / scale) projected onto the kept basis.

        For channels=1 the RGB image is first averaged to grey (the least-squares answer for a replicated
        grey basis). encode(render(z)) == z (to float32 rounding) when no pixel clips.
        """
        x = as_image_batch(images).astype(np.float64)
        if x.shape[1:3] != (self.height, self.width):
            raise ConfigError("images", f"images are {x.shape[1]}x{x.shape[2]}", f"{self.height}x{self.width}")
        if self.channels == 1:
            x = x.mean(axis=-1, keepdims=True)
        return self.coefficients((x - 0.5) / self.scale)

    def project(self, codes: np.ndarray) -> np.ndarray:
        """Radial projection into the ball ||z|| <= ball_radius (identity when no radius is set)."""
        codes = np.asarray(codes, dtype=np.float64)
        if self.ball_radius is None:
            return codes
        norms = np.linalg.norm(codes, axis=-1, keepdims=True)
        factor = np.where(norms > self.ball_radius, self.ball_radius / np.maximum(norms, 1e-300), 1.0)
        return codes * factor


class PixelGenerator(ImageGenerator):
    """The code is the flattened (H, W, 3) image; rendering clips to [0, 1]."""

    name = "pixel"

    def __init__(self, image_size: int | tuple[int, int] = 32):
        h, w = size2(image_size, "generator.image_size")
        self.image_shape = (h, w, 3)
        self.code_size = h * w * 3

    def render(self, codes: np.ndarray) -> np.ndarray:
        codes = self.check_codes(codes)
        return np.clip(codes, 0.0, 1.0).reshape(-1, *self.image_shape).astype(np.float32)

    def encode(self, images: np.ndarray) -> np.ndarray:
        x = as_image_batch(images)
        if x.shape[1:] != self.image_shape:
            h, w = self.image_shape[:2]
            raise ConfigError("images", f"images are {x.shape[1]}x{x.shape[2]}", f"{h}x{w}")
        return x.reshape(x.shape[0], -1).astype(np.float64)


# ------------------------------------------------------------------------------------------------- DeePSiM
# Two public PyTorch conversions exist; both load. They share one architecture for fc6 and fc7 (the variants
# differ only in their trained weights: fc6 inverts AlexNet fc6, fc7 inverts fc7).
# - "upconv": the Ponce-lab port (GAN_utils.upconvGAN, file upconvGAN_fc6.pt): layers named defc7, ..., deconv0
#   with biases on the transposed convolutions; output channels are BGR.
# - "pxdream": the reference's own loader (snslib/pxdream DeePSiMGenerator, file fc7.pt): layers fc7, ...,
#   tconv0 without transposed-convolution biases; output channels are BGR.
_DEEPSIM_CONVS = [  # (in, out, kernel, stride) - padding 1 throughout
    (256, 256, 4, 2),
    (256, 512, 3, 1),
    (512, 256, 4, 2),
    (256, 256, 3, 1),
    (256, 128, 4, 2),
    (128, 128, 3, 1),
    (128, 64, 4, 2),
    (64, 32, 4, 2),
    (32, 3, 4, 2),
]
_DEEPSIM_NAMES = {
    "upconv": (
        ["defc7", "defc6", "defc5"],
        ["deconv5", "conv5_1", "deconv4", "conv4_1", "deconv3", "conv3_1", "deconv2", "deconv1", "deconv0"],
        True,
    ),
    "pxdream": (
        ["fc7", "fc6", "fc5"],
        ["tconv5_0", "tconv5_1", "tconv4_0", "tconv4_1", "tconv3_0", "tconv3_1", "tconv2", "tconv1", "tconv0"],
        False,
    ),
}
_BGR_MEAN = (104.0, 117.0, 123.0)
_PREFIXES = ("module.", "G.", "_network.", "generator.", "net.")


def deepsim_state_dict_shapes(layout: str = "upconv") -> "OrderedDict[str, tuple[int, ...]]":
    """Expected state_dict keys and shapes of a DeePSiM fc6/fc7 weights file in the given layout."""
    fcs, convs, conv_bias = _DEEPSIM_NAMES[layout]
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    for name in fcs:
        shapes[f"{name}.weight"] = (4096, 4096)
        shapes[f"{name}.bias"] = (4096,)
    for name, (cin, cout, k, _) in zip(convs, _DEEPSIM_CONVS):
        shapes[f"{name}.weight"] = (cin, cout, k, k)  # ConvTranspose2d stores (in, out, kH, kW)
        if conv_bias:
            shapes[f"{name}.bias"] = (cout,)
    return shapes


def _build_deepsim(layout: str):
    import torch.nn as nn

    fcs, convs, conv_bias = _DEEPSIM_NAMES[layout]
    layers: list[tuple[str, nn.Module]] = []
    for i, name in enumerate(fcs):
        layers += [(name, nn.Linear(4096, 4096)), (f"relu_{name}", nn.LeakyReLU(0.3))]
    layers.append(("reshape", nn.Unflatten(1, (256, 4, 4))))
    for j, (name, (cin, cout, k, s)) in enumerate(zip(convs, _DEEPSIM_CONVS)):
        layers.append((name, nn.ConvTranspose2d(cin, cout, k, stride=s, padding=1, bias=conv_bias)))
        if j < len(convs) - 1:
            layers.append((f"relu_{name}", nn.LeakyReLU(0.3)))
    return nn.Sequential(OrderedDict(layers))


def _normalise_deepsim_keys(sd: dict, field: str) -> tuple[str, dict]:
    """Strip wrapper prefixes, detect the layout, undo the upconv port's ".1." key quirk."""
    out = {}
    for key, val in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = val
    if any(k.startswith("defc7.") for k in out):
        layout = "upconv"
    elif any(k.startswith("fc7.") for k in out):
        layout = "pxdream"
    else:
        first = next(iter(out), "<empty file>")
        raise ConfigError(
            field,
            f"unrecognised DeePSiM weights (first key {first!r}); expected the upconvGAN layout "
            "('defc7.weight', ..., 'deconv0.weight') or the pxdream layout ('fc7.weight', ..., 'tconv0.weight')",
        )
    expected = deepsim_state_dict_shapes(layout)
    fixed = {}
    for key, val in out.items():
        if key not in expected and key.replace(".1.", ".") in expected:
            key = key.replace(".1.", ".")
        fixed[key] = val
    return layout, fixed


class DeePSiMGenerator(ImageGenerator):
    """DeePSiM fc6/fc7 generator (4096-d code -> 256x256 RGB), run in torch with ``inference_mode``.

    Output = clamp((y + BGR mean (104, 117, 123)) / 255, 0, 1), then BGR -> RGB, optionally resized to
    ``image_size`` (antialiased bilinear). Weights (``torch.save``d state_dict, either public layout) are
    required: the network is built on the meta device and the file's tensors are assigned, so no random
    initialisation happens. ``device`` "auto" (default) renders on CUDA when present; ``precision`` and the
    CUDA-only speed-ups are those of server/engine/torchpaths.py (CPU fp32 results are unchanged).
    """

    name = "deepsim"
    variant = "fc7"

    def __init__(
        self,
        weights: str | Path,
        variant: str = "fc7",
        device: str = "auto",
        image_size: int | tuple[int, int] = 256,
        batch_size: int | None = None,
        precision: str = "auto",
    ):
        import torch

        if variant not in ("fc6", "fc7"):
            raise ConfigError("generator.variant", f"unknown DeePSiM variant {variant!r}", ["fc6", "fc7"])
        self.variant = variant
        self.name = f"deepsim-{variant}"
        self.device = pick_device(device, "generator.device")
        self.precision = torchpaths.pick_precision(precision, self.device, "generator.precision")
        h, w = size2(image_size, "generator.image_size")
        self.image_shape = (h, w, 3)
        self.code_size = 4096
        self.batch_size = torchpaths.pick_batch(batch_size, self.device, 32, "generator.batch_size")

        sd = load_state_dict_file(weights, "generator.weights")
        self.layout, sd = _normalise_deepsim_keys(sd, "generator.weights")
        check_state_dict(deepsim_state_dict_shapes(self.layout), sd, "generator.weights")
        with torch.device("meta"):
            net = _build_deepsim(self.layout)
        net.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, assign=True)
        self.net = torchpaths.prepare_module(net, self.device, self.precision)
        self._mean = torch.tensor(_BGR_MEAN, device=self.device).reshape(1, 3, 1, 1)
        if self.device == "cuda":
            self.warmup()

    def warmup(self, n: int | None = None) -> None:
        """Render ``n`` zero codes (default: a full batch) once, outside any timed path."""
        torchpaths.warm_up(lambda: self.render(np.zeros((n or self.batch_size, self.code_size))), self.device)

    def _pass(self, codes: np.ndarray) -> np.ndarray:
        """One forward pass of at most ``batch_size`` checked codes: images (b, H, W, 3) float32."""
        import torch
        import torch.nn.functional as F

        with torchpaths.compute(self.device, self.precision):
            z = torchpaths.upload(codes, self.device, torch.float32)
            y = self.net(z).float()  # (b, 3, 256, 256) BGR (float32 already unless under bf16 autocast)
            x = torch.clamp((y + self._mean) / 255.0, 0.0, 1.0)[:, [2, 1, 0]]
            if x.shape[-2:] != self.image_shape[:2]:
                x = F.interpolate(x, size=self.image_shape[:2], mode="bilinear", align_corners=False, antialias=True)
                x = x.clamp(0.0, 1.0)
            return x.permute(0, 2, 3, 1).cpu().numpy()

    def render(self, codes: np.ndarray) -> np.ndarray:
        codes = self.check_codes(codes)
        out = np.empty((codes.shape[0], *self.image_shape), dtype=np.float32)
        for start in range(0, codes.shape[0], self.batch_size):
            out[start : start + self.batch_size] = self._pass(codes[start : start + self.batch_size])
        return out

    def render_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """``render`` of several callers' codes in shared passes (probes run together). On the CPU in fp32
        each caller's images come out bit for bit as from its own ``render`` call (torchpaths.pack_passes)."""
        codes = [self.check_codes(c) for c in batches]
        exact = torchpaths.exact_pass_min(self.device, self.precision, 4)
        return torchpaths.run_passes(self._pass, codes, self.batch_size, exact)


class DeePSiMFc6Generator(DeePSiMGenerator):
    """DeePSiM generator trained to invert AlexNet fc6 (same architecture as fc7)."""

    def __init__(self, weights: str | Path, device: str = "auto", image_size: int | tuple[int, int] = 256,
                 batch_size: int | None = None, precision: str = "auto"):
        super().__init__(weights, "fc6", device, image_size, batch_size, precision)


class DeePSiMFc7Generator(DeePSiMGenerator):
    """DeePSiM generator trained to invert AlexNet fc7: the reference's generator."""

    def __init__(self, weights: str | Path, device: str = "auto", image_size: int | tuple[int, int] = 256,
                 batch_size: int | None = None, precision: str = "auto"):
        super().__init__(weights, "fc7", device, image_size, batch_size, precision)


GENERATORS: dict[str, type[ImageGenerator]] = {
    "dct": DCTGenerator,
    "deepsim-fc6": DeePSiMFc6Generator,
    "deepsim-fc7": DeePSiMFc7Generator,
    "pixel": PixelGenerator,
}


def make_generator(name: str, **params: Any) -> ImageGenerator:
    """Build a registered generator; unknown names or parameters -> ConfigError ("generator[.param]")."""
    return make_from_registry("generator", GENERATORS, name, params)
