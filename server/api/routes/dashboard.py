"""What the operator's dashboard reads beyond the plain resources: the whole view of a session (pushed as
server-sent events, or fetched once), the neuron's health, the rig's status, exports, a reference image
upload and who the caller is (operator or viewer).

One producer per watched session builds the view (server.api.push); every viewer gets the same text.
"""

from __future__ import annotations

import base64

import csv
import io
import math
import secrets
import time
import uuid
import zipfile
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from server.db import dashboard_queries as dq
from server.neuron_health import HealthThresholds, neuron_health
from server.rig_status import rig_status

from ..deps import Operator, RepositoryDep, ServiceDep
from ..push import PushHub
from ..stimulus_cache import stimulus_cache
from ..schemas import ErrorOut
from . import sessions as resources
from .stimuli import stimulus_url

router = APIRouter(tags=["dashboard"])
open_router = APIRouter(tags=["dashboard"])  # no read token needed: tells the page whether to ask for one

NOT_FOUND = {404: {"model": ErrorOut, "description": "no such session"}}


# --- the view ---------------------------------------------------------------------------------------------


def _nwb_link(app, session_id: uuid.UUID) -> str | None:
    """The NWB export's URL where this server has one (issue 14's route), else None."""
    for route in app.routes:
        path = getattr(route, "path", "")
        if "nwb" in path and "{session_id}" in path and "GET" in getattr(route, "methods", ()):
            return path.replace("{session_id}", str(session_id))
    return None


def _exports(app, session_id: uuid.UUID) -> dict[str, Any]:
    base = f"/api/sessions/{session_id}/export"
    return {"front_zip": f"{base}/front.zip", "presentations_csv": f"{base}/presentations.csv",
            "nwb": _nwb_link(app, session_id), "nwb_command": f"snslab export {session_id} --nwb session.nwb"}


def _thresholds(app) -> HealthThresholds:
    t = getattr(app.state, "neuron_thresholds", None)
    if t is None:
        t = app.state.neuron_thresholds = HealthThresholds()
    return t


def _neuron(repo, session_id: uuid.UUID, labels: list[str], t: HealthThresholds) -> dict[str, Any]:
    refs = dq.reference_responses(repo.engine, session_id)
    baseline = dq.baseline_by_generation(repo.engine, session_id, len(labels))
    return neuron_health(refs, baseline, labels, t)


def _labels(detail) -> list[str]:
    return [u.label or f"ch{u.channel}#{u.unit}" for u in detail.units] or ["unit 0"]


def _rig(repo, service, detail) -> dict[str, Any]:
    return rig_status(repo.engine, service, detail.id, generations_done=detail.generations_done,
                      generations_budget=detail.generations_budget, status=detail.status)


def _tiles(repo, session_id: uuid.UUID, generation: int, app=None) -> list[dict[str, Any]]:
    """The generation's images. For the pushed view (``app`` given) each tile also carries its PNG inline
    (``src``, a data URI): the view is built once and sent to every viewer, so ten viewers cost the server
    one query and one encoding per generation, not ten rounds of image requests."""
    tiles = dq.generation_tiles(repo.engine, session_id, generation)
    cache = stimulus_cache(app) if app is not None else None
    if cache is not None:
        cache.warm(repo, [t["stimulus_sha256"] for t in tiles])
    for t in tiles:
        t["url"] = stimulus_url(t["stimulus_sha256"])
        png = cache.get(t["stimulus_sha256"]) if cache is not None else None
        if png is not None:
            t["src"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return tiles


def build_view(app, session_id: uuid.UUID, after_event_id: int = 0, generation: int | None = None) -> tuple[dict, list]:
    """(the whole view of a session, its events after ``after_event_id``): what one SSE update carries."""
    repo, service = app.state.repository, app.state.service
    detail = resources.get_session(session_id, repo, service)
    g = detail.generations_started - 1 if generation is None else generation
    view = {
        "session_id": str(session_id),
        "server_time": time.time(),
        "detail": detail.model_dump(mode="json"),
        "sessions": _session_list(app),
        "generations": [x.model_dump(mode="json") for x in resources.generations(session_id, repo, 0)],
        "front": resources.front(session_id, repo, 0).model_dump(mode="json"),
        "images": {"generation": g, "tiles": _tiles(repo, session_id, g, app) if g >= 0 else []},
        "neuron": _neuron(repo, session_id, _labels(detail), _thresholds(app)),
        "rig": _rig(repo, service, detail),
        "exports": _exports(app, session_id),
    }
    events = repo.events(session_id, after_id=after_event_id, limit=1000)
    return view, [_event(e) for e in events]


def _event(e: dict[str, Any]) -> dict[str, Any]:
    return {"id": e["id"], "at": e["at"].isoformat(), "level": e["level"], "kind": e["kind"],
            "message": e["message"], "payload": e["payload"]}


def _session_list(app) -> list[dict[str, Any]]:
    """The session list, rebuilt only when a session was added or changed (one cheap query otherwise)."""
    repo = app.state.repository
    key = dq.list_marker(repo.engine)
    cached = getattr(app.state, "session_list_cache", None)
    if cached is None or cached[0] != key:
        cached = app.state.session_list_cache = (key, [s.model_dump(mode="json")
                                                       for s in resources.list_sessions(repo, 200)])
    return cached[1]


def _rig_part(app, session_id: uuid.UUID, state: dict) -> dict:
    repo, service = app.state.repository, app.state.service
    detail = resources.get_session(session_id, repo, service)
    return {"detail": detail.model_dump(mode="json"), "rig": _rig(repo, service, detail),
            "server_time": time.time()}


def hub(app) -> PushHub:
    h = getattr(app.state, "push_hub", None)
    if h is None:
        repo = app.state.repository
        h = app.state.push_hub = PushHub(
            marker=lambda sid: dq.change_marker(repo.engine, sid) + _live_marker(app.state.service, sid),
            build=lambda sid, after: build_view(app, sid, after),
            build_rig=lambda sid, state: _rig_part(app, sid, state),
            events_after=lambda sid, after: [_event(e) for e in repo.events(sid, after_id=after, limit=1000)],
        )
    return h


def _live_marker(service, session_id: uuid.UUID) -> tuple:
    """What the live loop knows that the database does not: connected clients and the pause flag."""
    if service is None:
        return ()
    loop = service.loop
    here = loop is not None and loop.session_id == session_id and not loop.finished.is_set()
    return (here, here and loop.paused, tuple(sorted((c.client_id, c.role, c.alive) for c in service.endpoint.clients())))


@router.get("/sessions/{session_id}/view", responses=NOT_FOUND)
def view(
    session_id: uuid.UUID, request: Request,
    generation: Annotated[int | None, Query(ge=0, description="images of this generation (default: the newest)")] = None,
) -> dict[str, Any]:
    """The whole dashboard view of a session at once (what each server-sent update carries), with every event."""
    detail = resources.get_session(session_id, request.app.state.repository, request.app.state.service)
    if generation is not None and generation >= detail.generations_started:
        raise HTTPException(404, f"session {session_id} has no generation {generation} "
                                 f"(it has {detail.generations_started})")
    state, events = build_view(request.app, session_id, 0, generation)
    return state | {"events": events}


@router.get("/sessions/{session_id}/generations/{generation}/tiles", responses=NOT_FOUND)
def tiles(session_id: uuid.UUID, generation: Annotated[int, Path(ge=0)], repo: RepositoryDep) -> list[dict[str, Any]]:
    """A generation's active presentations in batch order with image URL, kind, validity, QC reasons and every
    unit's counts (null until answered): the dashboard's image grid, also for past generations."""
    s = repo.session_summary(session_id)
    if generation >= s.n_generations:
        raise HTTPException(404, f"session {session_id} has no generation {generation} (it has {s.n_generations})")
    return _tiles(repo, session_id, generation)


@router.get("/sessions/{session_id}/stream", response_class=StreamingResponse, responses=NOT_FOUND | {
    200: {"content": {"text/event-stream": {}}, "description": "one `update` event per change: the whole view "
          "(as GET .../view) with the events since the previous update; the SSE id is the newest event id"}})
async def stream(
    session_id: uuid.UUID, request: Request, repo: RepositoryDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=False)] = None,
    since: Annotated[int | None, Query(ge=0, description="events after this id (like Last-Event-ID)")] = None,
) -> StreamingResponse:
    """Server-sent events of one session. After a reconnect (Last-Event-ID, or ``since``) the first update
    brings the current state and every event missed."""
    import asyncio

    await asyncio.to_thread(repo.session_summary, session_id)  # unknown id -> 404 before streaming
    try:
        after = int(last_event_id) if last_event_id not in (None, "") else (since or 0)
    except ValueError:
        after = since or 0
    gen = hub(request.app).stream(session_id, max(0, after), request.is_disconnected)
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/push")
def push_stats(request: Request) -> dict[str, Any]:
    """The server-push producers now running: per watched session its viewers, the views built and the CPU
    seconds spent building them (one producer per session, however many viewers)."""
    h = getattr(request.app.state, "push_hub", None)
    feeds = {} if h is None else dict(h.feeds)
    return {"feeds": {str(sid): {"subscribers": len(f.subscribers), "builds": f.builds, "build_cpu_s": f.build_s,
                                 "last_event_id": f.last_event_id} for sid, f in feeds.items()}}


@router.get("/sessions/{session_id}/neuron", responses=NOT_FOUND)
def neuron(
    session_id: uuid.UUID, request: Request, repo: RepositoryDep, service: ServiceDep,
    window: Annotated[int | None, Query(ge=2, le=200, description="repeats in the running estimate")] = None,
    drift: Annotated[float | None, Query(gt=0, le=10, description="warn above this relative change")] = None,
    collapse: Annotated[float | None, Query(gt=0, lt=1, description="'collapse' below (1 - this) of the start")] = None,
) -> dict[str, Any]:
    """Is the neuron still there? Every reference response per unit with its running estimate and 95% interval,
    the start estimate, the baseline rate per generation, and ``warning`` (one line, or null) when the reference
    response drifted or collapsed. Thresholds: the server's ($SNSLAB_NEURON_*), overridden by the parameters."""
    detail = resources.get_session(session_id, repo, service)
    t = _thresholds(request.app)
    overrides = {k: v for k, v in (("window", window), ("drift", drift), ("collapse", collapse)) if v is not None}
    if overrides:
        t = HealthThresholds.model_validate(t.model_dump() | overrides)
    return _neuron(repo, session_id, _labels(detail), t)


@router.get("/sessions/{session_id}/rig", responses=NOT_FOUND)
def rig(session_id: uuid.UUID, repo: RepositoryDep, service: ServiceDep) -> dict[str, Any]:
    """Display and bridge connected, last heard from, refresh rate and software pacing (as the display reports
    them), dropped frames, invalid presentations by reason, bridge latency, rig-display clock offset,
    presentations per minute and the estimated time to the end."""
    return _rig(repo, service, resources.get_session(session_id, repo, service))


# --- exports ------------------------------------------------------------------------------------------------


def _num(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    return str(v)


@router.get("/sessions/{session_id}/export/front.zip", response_class=Response, responses=NOT_FOUND | {
    200: {"content": {"application/zip": {}}, "description": "front.csv and one PNG per front member"}})
def export_front(
    session_id: uuid.UUID, repo: RepositoryDep,
    generation: Annotated[int | None, Query(ge=0, description="default: the newest completed generation")] = None,
) -> Response:
    """The first front of a generation: its images as PNGs and front.csv with each member's distances, fitness
    and responses (spike counts, one column per unit)."""
    summary = repo.session_summary(session_id)
    if generation is not None and generation >= summary.n_generations:
        raise HTTPException(404, f"session {session_id} has no generation {generation} (it has {summary.n_generations})")
    g, rows = dq.front_rows(repo.engine, session_id, generation)
    if g is None:
        raise HTTPException(404, f"session {session_id} has no completed generation yet")
    units = [u.label or f"ch{u.channel}#{u.unit}" for _, u in repo.units(session_id)]
    stages = sorted({k for r in rows for k in r["distances"]})
    images = repo.stimulus_images(r["stimulus_sha256"] for r in rows)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        table = io.StringIO()
        w = csv.writer(table)
        w.writerow(["file", "generation", "presentation_id", "order_in_batch", "code_index", "fitness", "selected",
                    *[f"distance_{s}" for s in stages], *[f"response_{u}" for u in units], "stimulus_sha256"])
        for r in rows:
            name = f"g{g:04d}_p{r['presentation_id']}.png"
            z.writestr(name, images[r["stimulus_sha256"]])
            w.writerow([name, g, r["presentation_id"], r["order_in_batch"], _num(r["code_index"]), _num(r["fitness"]),
                        int(bool(r["selected"])), *[_num(r["distances"].get(s)) for s in stages],
                        *[_num(c) for c in (r["counts"] + [None] * len(units))[:len(units)]], r["stimulus_sha256"]])
        z.writestr("front.csv", table.getvalue())
    name = f"snslab_{str(session_id)[:8]}_front_g{g}.zip"
    return Response(buf.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/sessions/{session_id}/export/presentations.csv", response_class=Response, responses=NOT_FOUND | {
    200: {"content": {"text/csv": {}}, "description": "one row per presentation (every attempt)"}})
def export_presentations(session_id: uuid.UUID, repo: RepositoryDep) -> Response:
    """Every presentation (all attempts) with timing, validity, QC reasons, counts per unit, distances and score."""
    h = repo.load_history(session_id)
    units = [u.label or f"ch{u.channel}#{u.unit}" for u in h.units]
    stages = sorted({k for d in h.distances if d for k in d})
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["presentation_id", "generation", "order_in_batch", "attempt", "superseded", "kind", "code_index",
                "stimulus_sha256", "onset_source", "display_onset", "rig_onset", "dropped_frames", "valid", "qc_reasons",
                *[f"count_{u}" for u in units], *[f"baseline_{u}" for u in units], "window_start_ms", "window_end_ms",
                *[f"distance_{s}" for s in stages], "front_index", "fitness", "selected"])
    for i in range(len(h)):
        answered = h.counts.shape[1] > 0 and not (h.counts[i] < 0).any()
        base_ok = h.baseline_counts.shape[1] > 0 and not (h.baseline_counts[i] < 0).any()
        d = h.distances[i] or {}
        w.writerow([
            int(h.presentation_id[i]), int(h.generation[i]), int(h.order_in_batch[i]), int(h.attempt[i]),
            int(bool(h.superseded[i])), h.kind[i], "" if h.code_index[i] < 0 else int(h.code_index[i]),
            h.stimulus_sha256[i], h.onset_source[i] or "", _num(float(h.display_onset[i])), _num(float(h.rig_onset[i])),
            "" if h.dropped_frames[i] < 0 else int(h.dropped_frames[i]),
            "" if h.valid[i] is None else int(bool(h.valid[i])), "; ".join(h.qc_reasons[i]),
            *(h.counts[i].tolist() if answered else [""] * len(units)),
            *(h.baseline_counts[i].tolist() if base_ok else [""] * len(units)),
            _num(float(h.window_ms[i, 0])), _num(float(h.window_ms[i, 1])), *[_num(d.get(s)) for s in stages],
            "" if h.front_index[i] < 0 else int(h.front_index[i]), _num(float(h.fitness[i])), int(bool(h.selected[i])),
        ])
    name = f"snslab_{str(session_id)[:8]}_presentations.csv"
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


# --- who am I --------------------------------------------------------------------------


@open_router.get("/whoami")
def whoami(request: Request) -> dict[str, Any]:
    """What the caller's token allows: ``operator`` (act), ``viewer`` (read) or ``anonymous``."""
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else request.query_params.get("access_token", "")
    state = request.app.state

    def matches(secret) -> bool:  # a SecretStr (or a plain string) on app.state; None: no such token
        value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
        return bool(token and value) and secrets.compare_digest(token.encode(), str(value).encode())

    role = "anonymous"
    if matches(state.operator_token):
        role = "operator"
    elif matches(getattr(state, "viewer_token", None)):
        role = "viewer"
    elif token:
        role = "unknown-token"
    return {"role": role, "can_act": role == "operator", "can_read": role in ("operator", "viewer"),
            "service": state.service is not None}
