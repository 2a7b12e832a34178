"""The presentations a session sends and the counts it gets back: the records shared by the session runner
and its reference check (server.session_runner, server.reference_phase)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PlannedPresentation:
    presentation_id: int
    order: int
    kind: str  # "candidate" | "reference"
    code_index: int | None  # row in the generation's code matrix (candidates)
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    attempt: int
    generation: int


@dataclass
class Batch:
    """What to dispatch now, in display order: generation ``generation``'s presentations, then (when
    planned) the next generation's lead-in. Each presentation carries its own generation."""

    generation: int
    presentations: list[PlannedPresentation]

    @property
    def ids(self) -> list[int]:
        return [p.presentation_id for p in self.presentations]


@dataclass
class Counts:
    """A presentation's spike counts (one per unit) in the response window, and in the baseline window."""

    presentation_id: int
    counts: np.ndarray
    baseline: np.ndarray | None = None
    valid: bool = True
    qc_reasons: tuple[str, ...] = ()
    window_ms: tuple[float, float] = (50.0, 200.0)
    baseline_window_ms: tuple[float, float] = (-50.0, 0.0)


@dataclass
class OpenGeneration:
    """The generation on display: what was sent, what came back, and (once told) what waits to be committed."""

    batch: Batch  # every presentation of the open generation (its lead-in included)
    codes: np.ndarray
    images: np.ndarray
    answered: dict[int, np.ndarray] = field(default_factory=dict)
    t_proposed: float = 0.0
    told: tuple | None = None  # (report, state, score records, timings) once told, until committed
