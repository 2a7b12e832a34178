"""A lab's own model neuron (a digital twin, a fitted model): ``subject.name = "python"``.

    [subject]
    name = "python"
    factory = "examples.my_neuron:make"   # package.module:callable, imported only when named
    preferred_hue = 0.0                   # every other key is passed to the callable

The callable returns either a ``Subject`` (``rate(images) -> (B, U)`` spikes/s, see snslab_common.neurons) or
a torch module mapping a (B, 3, H, W) float batch in [0, 1] to (B, ...) outputs, read as rates (flattened to
(B, U)). The module is imported with the current directory on ``sys.path`` (as ``python -m`` does), so a
file next to the config works from the repository or lab folder the run starts in. Outputs and storage record
the factory string and its parameters, never the object.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

import numpy as np

from snslab_common.errors import ConfigError
from snslab_common.imaging import as_image_batch

_FIELD = "subject.factory"


def load_factory(factory: Any):
    """The callable named by ``"package.module:callable"``."""
    if not isinstance(factory, str) or factory.count(":") != 1 or not all(factory.split(":")):
        raise ConfigError(_FIELD, f"bad value {factory!r}", "'package.module:callable'")
    module_name, attr = factory.split(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(_FIELD, f"cannot import {module_name!r} ({exc})",
                          "a module importable from the current directory or the environment") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(_FIELD, f"module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ConfigError(_FIELD, f"{factory!r} is not callable")
    return fn


class TorchModuleSubject:
    """A torch module as a subject: (B, H, W, 3) images -> (B, 3, H, W) tensor -> outputs read as rates."""

    name = "python"

    def __init__(self, module: Any):
        import torch

        self.module = module.eval()
        self._torch = torch
        self.n_units = 1  # set from the output's size on the first call

    def rate(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(as_image_batch(images).transpose(0, 3, 1, 2)))
        with torch.no_grad():
            out = self.module(x.float())
        r = out.detach().cpu().numpy().reshape(len(x), -1).astype(np.float64)
        self.n_units = r.shape[1]
        return r

    def counts(self, images: np.ndarray, window_s: float, rng: np.random.Generator) -> np.ndarray:
        lam = np.clip(self.rate(images), 0.0, None) * window_s
        return rng.poisson(lam).astype(np.int64)


def make_python_subject(factory: Any = None, image_size: Any = None, **params: Any):
    """Call the named factory with ``params`` (and ``image_size`` when it takes one); check what it returns."""
    if factory is None:
        raise ConfigError(_FIELD, "required by subject 'python'", "'package.module:callable'")
    fn = load_factory(factory)
    try:
        sig = inspect.signature(fn)
        takes_size = "image_size" in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        if image_size is not None and takes_size:
            params = {"image_size": image_size, **params}
        sig.bind(**params)
    except TypeError as exc:
        raise ConfigError("subject", f"bad parameters for factory {factory!r}: {exc}") from None
    except ValueError:  # builtins without a signature: just call
        pass
    try:
        obj = fn(**params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError("subject", f"factory {factory!r} failed: {exc}") from None
    if _is_torch_module(obj):
        return TorchModuleSubject(obj)
    if not callable(getattr(obj, "rate", None)):
        raise ConfigError(_FIELD, f"{factory!r} returned a {type(obj).__name__}",
                          "a Subject (with rate(images)) or a torch module")
    return obj


def _is_torch_module(obj: Any) -> bool:
    if "torch" not in sys.modules:
        return False
    return isinstance(obj, sys.modules["torch"].nn.Module)
