"""What the API answers, separate from the database rows: the dashboard and scripts read these shapes.

Responses are spike counts in the response window of one unit (``unit`` query parameter, a unit position,
default 0); distances are per stage, keyed by stage name, with the target unit(s) under ``"unit"``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    detail: str = Field(description="one line saying what was wrong")


class ValidationErrorOut(BaseModel):
    detail: str = Field(description="one line naming the first bad field, e.g. 'body.operator: Field required'")
    errors: list[dict[str, Any]] = Field(description="every problem, as pydantic reports it")


class HealthOut(BaseModel):
    status: str = Field(description="ok")
    version: str
    database: str = Field(description="database URL, password masked")
    embedded_database: bool
    service: bool = Field(description="whether this server can run sessions (else read-only)")
    wire: str | None = Field(None, description="ZeroMQ address the display and bridge connect to")


class UnitOut(BaseModel):
    position: int = Field(description="index of the unit in every response's counts")
    channel: int
    unit: int
    label: str


class ClientOut(BaseModel):
    client_id: str
    role: str
    alive: bool


class SessionOut(BaseModel):
    """A session in the list: who, where, which probe, how far."""

    id: uuid.UUID
    operator: str
    subject_id: str
    rig: str
    mode: str = Field(description="live | simulated | insilico")
    probe: str | None = Field(description="maximize | invariance | adversarial")
    status: str = Field(description="running | paused | completed | aborted | failed")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    n_units: int
    generations_done: int = Field(description="completed generations")
    generations_started: int = Field(description="generations proposed so far (the last one may be in flight)")
    generations_budget: int | None = Field(description="the probe's budget of generations")
    presentations: int = Field(description="active presentations (re-shown attempts count once)")
    presentations_answered: int
    presentations_invalid: int
    best_fitness: float | None


class LiveOut(BaseModel):
    """What the session service knows right now (only on the server that runs the session)."""

    running_here: bool = Field(description="this server's live loop runs this session")
    paused: bool | None = None
    dispatched: int | None = Field(None, description="presentations sent to the display")
    reports: int | None = Field(None, description="presentation reports received from the display")
    counts: int | None = Field(None, description="spike counts received from the bridge")
    boundary_ms: float | None = Field(None, description="server time from a generation's last counts to the next "
                                      "generation dispatched, median over the session (the display shows the "
                                      "next generation's lead-in meanwhile)")
    last_error: str | None = None
    clients: list[ClientOut] = Field(default_factory=list, description="display and bridge clients of the server")


class SessionDetailOut(SessionOut):
    seed: int
    software_version: str
    stages: list[str] = Field(description="stages the probe stretches or squeezes (first: plotted on the front)")
    units: list[UnitOut]
    config: dict[str, Any] = Field(description="the configuration stored with the session")
    live: LiveOut


class GenerationOut(BaseModel):
    index: int
    status: str = Field(description="planned (only its lead-in reference repeats so far) | proposed (in flight)"
                        " | completed")
    presentations: int
    answered: int
    invalid: int
    candidates: int
    mean_response: float | None = Field(description="mean spike count of the unit over valid candidates")
    best_response: int | None = Field(description="highest spike count of the unit over valid candidates")
    mean_reference_response: float | None = Field(description="mean spike count over valid reference presentations")
    front_size: int = Field(description="candidates on the first front")
    best_fitness: float | None
    timings: dict[str, Any] = Field(description="seconds spent in ask, tell and the whole generation")
    proposed_at: datetime
    completed_at: datetime | None


class FrontMemberOut(BaseModel):
    generation: int
    presentation_id: int
    order_in_batch: int
    code_index: int | None
    distances: dict[str, float]
    fitness: float | None
    selected: bool
    response: int | None = Field(description="spike count of the unit")
    stimulus_sha256: str
    image_url: str


class FrontOut(BaseModel):
    """The first front of every completed generation, oldest first."""

    session_id: uuid.UUID
    stages: list[str] = Field(description="stage names; the first is the x axis of the dashboard's front plot")
    members: list[FrontMemberOut]


class PresentationOut(BaseModel):
    id: int
    generation: int
    order_in_batch: int
    attempt: int
    superseded: bool = Field(description="re-shown later; its answer is kept but not counted")
    kind: str = Field(description="candidate | reference | natural | control")
    code_index: int | None
    stimulus_sha256: str
    image_url: str
    onset_source: str | None = Field(description="photodiode | ttl | marker | flip | simulated; null: not shown yet")
    display_onset: float | None = Field(description="display clock, seconds")
    rig_onset: float | None = Field(description="rig clock, seconds")
    dropped_frames: int | None
    valid: bool | None
    qc_reasons: list[str]
    counts: list[int] | None = Field(description="spike counts, one per unit in position order; null: no answer yet")
    window_ms: list[float] | None = Field(description="response window [start, end] after onset")
    distances: dict[str, float] | None
    front_index: int | None
    fitness: float | None
    selected: bool


class PresentationsOut(BaseModel):
    session_id: uuid.UUID
    generation: int | None = Field(description="the generation asked for (null: all)")
    units: list[str] = Field(description="unit labels, in the order of every presentation's counts")
    presentations: list[PresentationOut]


class ImageOut(BaseModel):
    presentation_id: int
    order_in_batch: int
    kind: str
    stimulus_sha256: str
    url: str


class EventOut(BaseModel):
    id: int
    at: datetime
    level: str
    kind: str
    message: str
    payload: dict[str, Any]
