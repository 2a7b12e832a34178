"""Subjects for in-silico runs: the model neurons (snslab_common.neurons, shared with the simulated rig) and
CNN units read through the ``cnn`` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from snslab_common.errors import ConfigError
from snslab_common.imaging import number
from snslab_common.neurons import (  # noqa: F401  (the model neurons are subjects too)
    DEFAULT_C50_CONTRAST,
    MODEL_NEURONS,
    ComplexCell,
    MixedUnit,
    ModelNeuron,
    PooledUnit,
    SimpleCell,
    Subject,
    naka_rushton,
)
from snslab_common.registry import make_from_registry


class CNNUnit(Subject):
    """One unit of a CNN layer as a neuron: rate = baseline + gain * relu(feature).

    ``unit``: a flat index into the layer's flattened output; [c] = the centre position of channel c
    (for a (C, H, W) output: (c, H // 2, W // 2)); [c, y, x] = an explicit position. The network options are
    those of the ``cnn`` stage (errors name "subject.<param>"), ``device = "auto"`` and ``precision`` included.
    """

    name = "cnn-unit"
    n_units = 1

    def __init__(
        self,
        architecture: str | None = None,
        layer: str | None = None,
        unit: int | Sequence[int] = 0,
        weights: str | Path | None = None,
        module: Any = None,
        input_size: int | None = 224,
        normalize: str | tuple | None = "imagenet",
        device: str = "auto",
        baseline: float = 0.0,
        gain: float = 1.0,
        batch_size: int | None = None,
        seed: int = 0,
        precision: str = "auto",
    ):
        from server.engine.stages import CNNStage

        self.stage = CNNStage(
            architecture=architecture, layer=layer, weights=weights, module=module, input_size=input_size,
            normalize=normalize, device=device, batch_size=batch_size, seed=seed, precision=precision,
            _field="subject",
        )
        self._bind(unit, baseline, gain)

    @classmethod
    def on_stage(cls, stage: Any, unit: int | Sequence[int] = 0, baseline: float = 0.0, gain: float = 1.0) -> "CNNUnit":
        """A unit read from an existing network (a ``CNNStage``, or one shared by probes run together)."""
        self = cls.__new__(cls)
        self.stage = stage
        self._bind(unit, baseline, gain)
        return self

    def _bind(self, unit, baseline, gain) -> None:
        self.baseline = number(baseline, "subject.baseline")
        self.gain = number(gain, "subject.gain")
        shape = self.stage.feature_shape
        size = int(np.prod(shape))
        if isinstance(unit, (int, np.integer)) and not isinstance(unit, bool):
            index = int(unit)
        elif isinstance(unit, (list, tuple)) and len(unit) == 1 and len(shape) in (1, 3):
            c = int(unit[0])
            if not 0 <= c < shape[0]:
                raise ConfigError("subject.unit", f"channel {c} out of range", f"0..{shape[0] - 1}")
            index = c if len(shape) == 1 else int(np.ravel_multi_index((c, shape[1] // 2, shape[2] // 2), shape))
        elif isinstance(unit, (list, tuple)) and len(unit) == len(shape):
            if not all(0 <= int(u) < s for u, s in zip(unit, shape)):
                raise ConfigError("subject.unit", f"position {list(unit)} outside the layer output {list(shape)}")
            index = int(np.ravel_multi_index(tuple(int(u) for u in unit), shape))
        else:
            raise ConfigError("subject.unit", f"bad value {unit!r} for a layer output of shape {list(shape)}",
                              "a flat index, [channel] or [channel, y, x]")
        if not 0 <= index < size:
            raise ConfigError("subject.unit", f"index {index} out of range for {size} features", f"0..{size - 1}")
        self.index = index

    def rate(self, images: np.ndarray) -> np.ndarray:
        f = self.stage.features(images)[:, self.index].astype(np.float64)
        return (self.baseline + self.gain * np.maximum(f, 0.0))[:, None]


class UnitPopulation(Subject):
    """Several subjects read together (a multi-unit rig): rates concatenated to (B, sum of units)."""

    name = "population"

    def __init__(self, subjects: Sequence[Subject]):
        if not subjects:
            raise ConfigError("subject.units", "a population needs at least one subject")
        self.subjects = list(subjects)
        self.n_units = sum(s.n_units for s in self.subjects)

    def rate(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([s.rate(images) for s in self.subjects], axis=1)


SUBJECTS: dict[str, type[Subject]] = {**MODEL_NEURONS, "cnn-unit": CNNUnit}


def make_subject(name: str, **params: Any) -> Subject:
    """Build a registered subject; unknown names or parameters -> ConfigError ("subject[.param]").
    ``python``: a user's own factory (snslab_common.pyfactory)."""
    if name == "python":
        from snslab_common.pyfactory import make_python_subject

        return make_python_subject(**params)
    return make_from_registry("subject", {**SUBJECTS, "python": Subject}, name, params)
