"""Sessions: the list, one session's status, its generations, fronts, presentations, images and events,
and the operator's verbs (create, start, pause, resume, stop), which need the operator token.

Reads go to the repository (any stored session, also in-silico runs); verbs go to the session service,
which owns the rig. Responses are the unit's spike counts (``unit`` = unit position, default 0).
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Callable

import numpy as np
import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError

from server.db import SessionNotFound
from server.db.models import Session as SessionRow
from server.db.records import SessionSummary
from server.service import SessionCreate

from ..actions import log_action
from ..deps import Operator, RepositoryDep, RequiredServiceDep, ServiceDep
from ..errors import one_line
from ..schemas import (
    ClientOut,
    ErrorOut,
    EventOut,
    FrontMemberOut,
    FrontOut,
    GenerationOut,
    ImageOut,
    LiveOut,
    PresentationOut,
    PresentationsOut,
    SessionDetailOut,
    SessionOut,
    UnitOut,
    ValidationErrorOut,
)
from .stimuli import stimulus_url

router = APIRouter(prefix="/sessions", tags=["sessions"])

NOT_FOUND = {404: {"model": ErrorOut, "description": "no such session"}}
INVALID = {422: {"model": ValidationErrorOut, "description": "a parameter or the body is invalid"}}
OPERATOR = {
    401: {"model": ErrorOut, "description": "operator token missing or wrong"},
    400: {"model": ErrorOut, "description": "the request cannot be carried out (one line saying why)"},
    503: {"model": ErrorOut, "description": "this server has no session service"},
}
UnitPosition = Annotated[int, Query(ge=0, description="unit position whose responses are reported")]


# --- what a stored configuration says about the probe ---------------------------------------------------------


def _configs(repo, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    # The repository's summaries carry no configuration yet; one query for all of them.
    if not ids:
        return {}
    with repo.engine.connect() as conn:
        rows = conn.execute(sa.select(SessionRow.id, SessionRow.config).where(SessionRow.id.in_(ids))).all()
    return {r.id: r.config for r in rows}


def probe_of(config: dict[str, Any]) -> tuple[str | None, int | None, list[str]]:
    """(probe mode, budget of generations, stage names) from a stored configuration.

    Service sessions store {"session": ..., "probe": ProbeConfig}; in-silico runs store the ProbeConfig with
    the run's "phase" (the maximize phase that finds an invariance probe's reference has its own budget).
    """
    probe = config.get("probe") if isinstance(config.get("probe"), dict) else config
    mode = probe.get("mode")
    budget = probe.get("generations")
    if config.get("phase") == "maximize" and mode != "maximize":
        mode, budget = "maximize", (probe.get("reference") or {}).get("generations", budget)
    stages = [] if mode == "maximize" else [s.get("label") or s.get("name") for s in probe.get("stages", [])]
    return mode, budget, [s for s in stages if s]


def _session_out(s: SessionSummary, stored_config: dict[str, Any], cls: Callable = SessionOut, **extra) -> Any:
    mode, budget, _ = probe_of(stored_config)
    done = s.n_completed_generations
    if isinstance(budget, int):  # a live maximize session's reference check is one more generation, not the search's
        done = min(done, budget)
    return cls(
        id=s.id, operator=s.operator, subject_id=s.subject_id, rig=s.rig, mode=s.mode, probe=mode, status=s.status,
        created_at=s.created_at, updated_at=s.updated_at, finished_at=s.finished_at, n_units=s.n_units,
        generations_done=done, generations_started=s.n_generations, generations_budget=budget,
        presentations=s.n_presentations, presentations_answered=s.n_answered, presentations_invalid=s.n_invalid,
        best_fitness=s.best_fitness, **extra,
    )


def _live(service, session_id: uuid.UUID) -> LiveOut:
    if service is None:
        return LiveOut(running_here=False)
    clients = [ClientOut(**c) for c in service.clients()]
    loop = service.loop
    if loop is None or loop.session_id != session_id or loop.finished.is_set():
        return LiveOut(running_here=False, clients=clients)
    st = loop.stats
    boundary = 1000 * float(np.median(st.overhead_s)) if st.overhead_s else None
    return LiveOut(running_here=True, paused=loop.paused, dispatched=st.dispatched, reports=st.reports,
                   counts=st.counts, boundary_ms=boundary, last_error=st.last_error, clients=clients)


def _detail(repo, service, session_id: uuid.UUID) -> SessionDetailOut:
    s = repo.session_summary(session_id)  # SessionNotFound -> 404
    config = _configs(repo, [session_id]).get(session_id, {})
    _, _, stages = probe_of(config)
    units = [UnitOut(position=i, channel=u.channel, unit=u.unit, label=u.label)
             for i, (_, u) in enumerate(repo.units(session_id))]
    return _session_out(s, config, SessionDetailOut, seed=s.seed, software_version=s.software_version,
                        stages=stages, units=units, config=config, live=_live(service, session_id))


def _summary_for_unit(repo, session_id: uuid.UUID, unit: int) -> SessionSummary:
    s = repo.session_summary(session_id)
    if unit >= max(s.n_units, 1):
        raise RequestValidationError([{
            "type": "value_error", "loc": ("query", "unit"), "input": unit,
            "msg": f"session {session_id} has {s.n_units} unit(s) (allowed: 0..{max(s.n_units - 1, 0)})",
        }])
    return s


def _no_generation(session_id: uuid.UUID, generation: int, n: int) -> str:
    return f"session {session_id} has no generation {generation} (it has {n})"


def _finite(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


# --- reads --------------------------------------------------------------------------------------------------


@router.get("", response_model=list[SessionOut], responses=INVALID)
def list_sessions(repo: RepositoryDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[SessionOut]:
    """Sessions, newest first."""
    summaries = repo.list_sessions(limit=limit)
    configs = _configs(repo, [s.id for s in summaries])
    return [_session_out(s, configs.get(s.id, {})) for s in summaries]


@router.get("/{session_id}", response_model=SessionDetailOut, responses=NOT_FOUND | INVALID)
def get_session(session_id: uuid.UUID, repo: RepositoryDep, service: ServiceDep) -> SessionDetailOut:
    """Status of one session: the stored summary plus what the live loop knows (clients, counts received)."""
    return _detail(repo, service, session_id)


@router.get("/{session_id}/generations", response_model=list[GenerationOut], responses=NOT_FOUND | INVALID)
def generations(session_id: uuid.UUID, repo: RepositoryDep, unit: UnitPosition = 0) -> list[GenerationOut]:
    """Per-generation statistics, oldest first (the last one may still be in flight)."""
    _summary_for_unit(repo, session_id, unit)
    return [
        GenerationOut(
            index=g.index, status=g.status, presentations=g.n_presentations, answered=g.n_answered,
            invalid=g.n_invalid, candidates=g.n_candidates, mean_response=_finite(g.mean_response),
            best_response=g.max_response, mean_reference_response=_finite(g.mean_reference_response),
            front_size=g.front_size, best_fitness=_finite(g.best_fitness), timings=g.timings or {},
            proposed_at=g.proposed_at, completed_at=g.completed_at,
        )
        for g in repo.generation_stats(session_id, unit_position=unit)
    ]


@router.get("/{session_id}/front", response_model=FrontOut, responses=NOT_FOUND | INVALID)
def front(session_id: uuid.UUID, repo: RepositoryDep, unit: UnitPosition = 0) -> FrontOut:
    """The first front of every completed generation: per-stage distances of each member."""
    _summary_for_unit(repo, session_id, unit)
    _, _, stages = probe_of(_configs(repo, [session_id]).get(session_id, {}))
    members = repo.front_history(session_id, unit_position=unit)
    if not stages:  # configs written elsewhere: the stages are whatever was scored besides the unit
        stages = sorted({k for m in members for k in m.distances} - {"unit"})
    return FrontOut(
        session_id=session_id,
        stages=stages,
        members=[
            FrontMemberOut(generation=m.generation, presentation_id=m.presentation_id, order_in_batch=m.order_in_batch,
                           code_index=m.code_index, distances=m.distances, fitness=_finite(m.fitness),
                           selected=m.selected, response=m.response, stimulus_sha256=m.stimulus_sha256,
                           image_url=stimulus_url(m.stimulus_sha256))
            for m in members
        ],
    )


@router.get("/{session_id}/presentations", response_model=PresentationsOut, responses=NOT_FOUND | INVALID)
def presentations(
    session_id: uuid.UUID,
    repo: RepositoryDep,
    generation: Annotated[int | None, Query(ge=0, description="one generation (default: all)")] = None,
) -> PresentationsOut:
    """Every presentation (all attempts) with its timing, validity, counts and score, in batch order."""
    h = repo.load_history(session_id)
    if generation is not None and generation >= h.session.n_generations:
        raise HTTPException(404, _no_generation(session_id, generation, h.session.n_generations))
    rows = range(len(h)) if generation is None else [i for i in range(len(h)) if h.generation[i] == generation]

    def opt_int(v) -> int | None:
        return None if v < 0 else int(v)

    out = [
        PresentationOut(
            id=int(h.presentation_id[i]), generation=int(h.generation[i]), order_in_batch=int(h.order_in_batch[i]),
            attempt=int(h.attempt[i]), superseded=bool(h.superseded[i]), kind=str(h.kind[i]),
            code_index=opt_int(h.code_index[i]), stimulus_sha256=h.stimulus_sha256[i],
            image_url=stimulus_url(h.stimulus_sha256[i]), onset_source=h.onset_source[i],
            display_onset=_finite(h.display_onset[i]), rig_onset=_finite(h.rig_onset[i]),
            dropped_frames=opt_int(h.dropped_frames[i]),
            valid=None if h.valid[i] is None else bool(h.valid[i]), qc_reasons=h.qc_reasons[i],
            counts=None if (h.counts[i] < 0).any() or h.counts.shape[1] == 0 else h.counts[i].tolist(),
            window_ms=None if math.isnan(h.window_ms[i, 0]) else h.window_ms[i].tolist(),
            distances=h.distances[i], front_index=opt_int(h.front_index[i]), fitness=_finite(h.fitness[i]),
            selected=bool(h.selected[i]),
        )
        for i in rows
    ]
    return PresentationsOut(session_id=session_id, generation=generation,
                            units=[u.label or f"ch{u.channel}#{u.unit}" for u in h.units], presentations=out)


@router.get("/{session_id}/generations/{generation}/images", response_model=list[ImageOut],
            responses=NOT_FOUND | INVALID)
def generation_images(
    session_id: uuid.UUID, generation: Annotated[int, Path(ge=0)], repo: RepositoryDep
) -> list[ImageOut]:
    """The images of a generation's batch (active presentations, batch order); fetch each from its url."""
    s = repo.session_summary(session_id)
    if generation >= s.n_generations:
        raise HTTPException(404, _no_generation(session_id, generation, s.n_generations))
    return [
        ImageOut(presentation_id=im.presentation_id, order_in_batch=im.order_in_batch, kind=im.kind,
                 stimulus_sha256=im.stimulus_sha256, url=stimulus_url(im.stimulus_sha256))
        for im in repo.generation_images(session_id, generation)
    ]


@router.get("/{session_id}/events", response_model=list[EventOut], responses=NOT_FOUND | INVALID)
def events(
    session_id: uuid.UUID,
    repo: RepositoryDep,
    after_id: Annotated[int, Query(ge=0, description="only events after this id (for polling)")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[EventOut]:
    """The session's event log, oldest first."""
    repo.session_summary(session_id)
    return [EventOut(**{k: e[k] for k in EventOut.model_fields}) for e in
            repo.events(session_id, after_id=after_id, limit=limit)]


# --- the operator's verbs -----------------------------------------------------------------------------------


@router.post("", response_model=SessionDetailOut, status_code=status.HTTP_201_CREATED,
             dependencies=[Operator], responses=OPERATOR | INVALID)
def create_session(spec: SessionCreate, request: Request, repo: RepositoryDep,
                   service: RequiredServiceDep) -> SessionDetailOut:
    """Store a new session (status paused, nothing shown yet); start it with POST .../start."""
    try:
        session_id = service.create(spec)
    except SessionNotFound as exc:  # the reference names a session that does not exist: a bad body, not a bad URL
        raise HTTPException(400, f"reference.session_id: {one_line(exc)}") from None
    log_action(request, repo, session_id, "create")
    return _detail(repo, service, session_id)


def _verb(name: str, doc: str):
    def action(session_id: uuid.UUID, request: Request, repo: RepositoryDep,
               service: RequiredServiceDep) -> SessionDetailOut:
        before = repo.session_summary(session_id).status  # unknown id -> 404 before the service is asked
        getattr(service, name)(session_id)
        if repo.session_summary(session_id).status != before:  # who asked, for every change (not for no-ops)
            log_action(request, repo, session_id, name)
        return _detail(repo, service, session_id)

    action.__name__ = f"{name}_session"
    action.__doc__ = doc
    router.add_api_route(f"/{{session_id}}/{name}", action, methods=["POST"], response_model=SessionDetailOut,
                         dependencies=[Operator], responses=OPERATOR | NOT_FOUND | INVALID,
                         summary=f"{name.capitalize()} a session")


_verb("start", "Run a stored session on the rig (after a server restart: resume it where it stopped).")
_verb("pause", "Stop showing new generations; the open one is kept and answered.")
_verb("resume", "Continue a paused session.")
_verb("stop", "Stop for good (status aborted unless already finished); what was stored stays.")
