"""What the repository takes and gives back: plain, typed records (no SQLAlchemy, no database).

The session runner, the API and replay code import these; only the repository (server/db) talks SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from snslab_common.errors import SnslabError

# --- errors ------------------------------------------------------------------------------------------------


class StorageError(SnslabError, RuntimeError):
    """A write that would make the recording inconsistent; nothing was stored."""


class SessionNotFound(StorageError, LookupError):
    pass


class GenerationStateError(StorageError):
    """A generation was begun/completed out of order, or repeated with different content."""


# --- what callers pass in --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """One slot of a generation's batch: an image to show and, for candidates, the code that made it.

    ``image`` is PNG bytes, or an (H, W, 3) array (float in [0, 1] or uint8) that is encoded to PNG here.
    ``code_index`` is the row of the optimizer's code matrix (candidates), so tell() gets codes in ask order
    whatever the display order ``order_in_batch`` is.
    """

    image: bytes | np.ndarray
    kind: str
    order_in_batch: int
    code: np.ndarray | None = None
    code_index: int | None = None


@dataclass(frozen=True)
class UnitSpec:
    channel: int
    unit: int
    label: str = ""


@dataclass(frozen=True)
class PresentationTiming:
    """When a presentation appeared: display clock (seconds), rig clock (seconds), and its quality control."""

    presentation_id: int
    onset_source: str
    display_onset: float | None = None
    rig_onset: float | None = None
    scheduled_onset: float | None = None
    dropped_frames: int = 0
    valid: bool = True
    qc_reasons: Sequence[str] = ()


@dataclass(frozen=True)
class ResponseRecord:
    """Spike counts of all the session's units (in unit position order) for one presentation."""

    presentation_id: int
    counts: Sequence[int] | np.ndarray
    window_start_ms: float
    window_end_ms: float
    baseline_counts: Sequence[int] | np.ndarray | None = None
    baseline_start_ms: float | None = None
    baseline_end_ms: float | None = None


@dataclass(frozen=True)
class ScoreRecord:
    """How the optimizer ranked one answered presentation."""

    presentation_id: int
    distances: Mapping[str, float]
    front_index: int | None
    fitness: float | None
    selected: bool = False


@dataclass(frozen=True)
class WriteResult:
    """Outcome of a batched idempotent write.

    inserted: new rows; duplicates: repeats identical to what was stored (ignored); conflicts: repeats
    that differ from what was stored (ignored, logged as error events); rejected: rows for unknown
    presentations or with the wrong number of units (logged as error events).
    """

    inserted: int
    duplicates: int = 0
    conflicts: tuple[int, ...] = ()
    rejected: tuple[int, ...] = ()


# --- what callers get back ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresentationState:
    """A presentation as stored: identity, content, whether it was shown and answered."""

    id: int
    order_in_batch: int
    attempt: int
    kind: str
    code_index: int | None
    code: np.ndarray | None
    stimulus_sha256: str
    shown: bool
    valid: bool | None
    counts: np.ndarray | None
    baseline_counts: np.ndarray | None
    superseded: bool = False

    @property
    def answered(self) -> bool:
        return self.counts is not None


@dataclass(frozen=True)
class GenerationData:
    """The active presentations of one generation in batch order, as committed (what tell() may see)."""

    session_id: uuid.UUID
    index: int
    status: str
    presentations: list[PresentationState]

    @property
    def answered(self) -> list[PresentationState]:
        return [p for p in self.presentations if p.answered]

    @property
    def unanswered(self) -> list[PresentationState]:
        return [p for p in self.presentations if not p.answered]

    def candidate_codes(self) -> np.ndarray:
        """(n_candidates, code_size) in code_index order."""
        cands = sorted((p for p in self.presentations if p.kind == "candidate"), key=lambda p: p.code_index)
        return np.stack([p.code for p in cands]) if cands else np.zeros((0, 0))

    def counts_matrix(self, kind: str | None = "candidate", order: str = "code_index") -> np.ndarray:
        """(P, U) counts, rows of unanswered presentations filled with -1."""
        rows = [p for p in self.presentations if kind is None or p.kind == kind]
        if order == "code_index":
            rows.sort(key=lambda p: (p.code_index is None, p.code_index, p.order_in_batch))
        width = next((len(p.counts) for p in self.presentations if p.counts is not None), 0)
        out = np.full((len(rows), width), -1, dtype=np.int64)
        for i, p in enumerate(rows):
            if p.counts is not None:
                out[i] = p.counts
        return out


@dataclass(frozen=True)
class InFlightGeneration:
    """A generation whose proposals were committed (maybe dispatched) but which was never completed."""

    index: int
    optimizer_state_before: bytes
    rng_state_before: dict[str, Any] | None
    data: GenerationData

    @property
    def answered(self) -> list[PresentationState]:
        return self.data.answered

    @property
    def unanswered(self) -> list[PresentationState]:
        return self.data.unanswered


@dataclass(frozen=True)
class ResumePoint:
    """Where to continue a session after a crash.

    ``last_completed`` is the index of the newest completed generation (None: none yet), with the optimizer
    and RNG state saved after its tell(); ``in_flight`` is the generation begun after it, if any, and
    ``planned`` the one after that, when its lead-in reference repeats were committed ahead.
    """

    session_id: uuid.UUID
    seed: int
    config: dict[str, Any]
    status: str
    last_completed: int | None
    optimizer_state: bytes | None
    rng_state: dict[str, Any] | None
    in_flight: InFlightGeneration | None
    planned: GenerationData | None = None  # the next generation's lead-in, committed ahead (maybe shown)

    @property
    def next_index(self) -> int:
        """Index of the generation to run next (the in-flight one, if any)."""
        if self.in_flight is not None:
            return self.in_flight.index
        return 0 if self.last_completed is None else self.last_completed + 1


@dataclass(frozen=True)
class SessionSummary:
    id: uuid.UUID
    operator: str
    subject_id: str
    rig: str
    mode: str
    status: str
    seed: int
    software_version: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    n_units: int
    n_generations: int
    n_completed_generations: int
    n_presentations: int
    n_answered: int
    n_invalid: int
    best_fitness: float | None


@dataclass(frozen=True)
class GenerationStats:
    index: int
    status: str
    n_presentations: int
    n_answered: int
    n_invalid: int
    n_candidates: int
    mean_response: float | None
    max_response: int | None
    mean_reference_response: float | None
    front_size: int
    best_fitness: float | None
    timings: dict[str, Any]
    proposed_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class FrontMember:
    generation: int
    presentation_id: int
    order_in_batch: int
    code_index: int | None
    distances: dict[str, float]
    fitness: float | None
    selected: bool
    response: int | None
    stimulus_sha256: str


@dataclass(frozen=True)
class GenerationImage:
    presentation_id: int
    order_in_batch: int
    kind: str
    stimulus_sha256: str
    png: bytes


@dataclass
class SessionHistory:
    """Everything recorded in a session, column-wise (one array entry per presentation, all attempts).

    ``counts`` is (P, U) with -1 where no response arrived; ``codes`` is (P, code_size) with NaN rows for
    presentations without a code. ``generations`` holds per-generation rows (optimizer states only when asked).
    """

    session: SessionSummary
    config: dict[str, Any]
    units: list[UnitSpec]
    generations: list[dict[str, Any]]
    presentation_id: np.ndarray
    generation: np.ndarray
    order_in_batch: np.ndarray
    attempt: np.ndarray
    superseded: np.ndarray
    kind: np.ndarray
    code_index: np.ndarray
    codes: np.ndarray
    stimulus_sha256: list[str]
    display_onset: np.ndarray
    rig_onset: np.ndarray
    onset_source: list[str | None]
    dropped_frames: np.ndarray
    valid: np.ndarray
    qc_reasons: list[list[str]]
    counts: np.ndarray
    baseline_counts: np.ndarray
    window_ms: np.ndarray
    distances: list[dict[str, float] | None]
    front_index: np.ndarray
    fitness: np.ndarray
    selected: np.ndarray
    images: dict[str, bytes] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.presentation_id)


# --- helpers ----------------------------------------------------------------------------------------------


def group_unit_rows(
    rows: Iterable[tuple[int, int, int, int | None, float, float]],
    unit_ids: Sequence[int],
    baseline_window_ms: tuple[float, float] | None = None,
) -> list[ResponseRecord]:
    """Per-unit rows (presentation_id, unit_id, count, baseline_count, window_start_ms, window_end_ms) ->
    one ResponseRecord per presentation with counts in unit order (``unit_ids`` in position order, as
    returned by add_units). Every presentation must have every unit."""
    pos = {u: i for i, u in enumerate(unit_ids)}
    grouped: dict[int, dict[str, Any]] = {}
    for pid, uid, count, base, w0, w1 in rows:
        if uid not in pos:
            raise ValueError(f"unit {uid} is not a unit of this session")
        g = grouped.setdefault(pid, {"counts": [None] * len(pos), "base": [None] * len(pos), "w": (w0, w1)})
        g["counts"][pos[uid]] = count
        g["base"][pos[uid]] = base
    out = []
    for pid, g in grouped.items():
        if any(c is None for c in g["counts"]):
            raise ValueError(f"presentation {pid}: counts missing for some units")
        base = None if all(b is None for b in g["base"]) else g["base"]
        b0, b1 = baseline_window_ms if base is not None and baseline_window_ms else (None, None)
        out.append(ResponseRecord(pid, g["counts"], g["w"][0], g["w"][1], base, b0, b1))
    return out
