"""The operator's verbs on sessions (create, start, pause, resume, stop, status), shared by the HTTP API
and the CLI. It owns the live loop (``server.live``) and the database; the API layer only translates HTTP.

Session lifecycle: created (stored, status "paused", nothing shown) -> running -> paused <-> running ->
completed | aborted | failed. One session runs on the rig at a time.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Literal

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from snslab_common.errors import SnslabError

log = logging.getLogger("snslab.service")


class ReferenceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["maximize-session", "image", "code", "none"] = Field(
        "none", description="none (maximize probes) | maximize-session: the best image of an earlier maximize "
        "session | image: a file on the server | code: a stored .npy code"
    )
    session_id: uuid.UUID | None = None
    path: str | None = None


class SessionCreate(BaseModel):
    """What the operator fills in to start a probe on the rig. Upper bounds: server/limits.py (README)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    operator: str = Field(min_length=1, max_length=100)
    subject_id: str = Field(min_length=1, max_length=100, description="animal id")
    rig: str = Field("rig-1", min_length=1, max_length=100)
    probe: dict[str, Any] = Field(
        default_factory=dict,
        description="a probe config as in `snslab insilico --help` (mode, generator, stages, optimizer, "
        "population, generations, seed, ...); its subject/noise are ignored on a rig",
    )
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec)
    units: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["sim:0"], min_length=1, max_length=1024, description="rig unit keys (at most 1024)")
    target_units: list[str] | None = Field(None, description="units the probe targets (default: all)")
    on_ms: float = Field(100.0, gt=0, le=2000)
    off_ms: float = Field(100.0, gt=0, le=2000)
    response_window_ms: tuple[float, float] = Field(
        (50.0, 200.0), description="[start, end) after onset in ms, 0 <= start < end <= 2000")

    @field_validator("response_window_ms")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0.0 <= v[0] < v[1] <= 2000.0):
            raise ValueError(f"[{v[0]:g}, {v[1]:g}] is not a window (allowed: 0 <= start < end <= 2000 ms)")
        return v
    compute_check: Literal["refuse", "warn", "off"] = Field(
        "refuse", description="a timed dry run of the generator and stages on this server at creation: refuse "
        "a session whose compute per generation exceeds its display time (refuse), only log a warning (warn), "
        "or skip the dry run (off); a session whose compute the lead-in cannot hide is always warned about"
    )


def _one_line(err: Exception) -> str:
    """A refusal in one line: pydantic's errors as 'field: message; ...', anything else with folded spaces."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'session'}: {e['msg']}" for e in err.errors())
    return " ".join(str(err).split())


class ServiceError(SnslabError, ValueError):
    """An operator request that cannot be carried out; the message is one line."""


class SessionService:
    """Creates sessions in the database and runs one at a time on the rig through a LiveLoop."""

    def __init__(self, database, *, bind: str = "tcp://127.0.0.1:5555", timing=None, resume: bool = False,
                 stall_s: float = 8.0, endpoint_options: dict | None = None, reference_dir=None):
        """``database``: a server.db.Database, or a Repository itself. ``resume``: re-open the live session
        that was running (or paused) when the server died, before the wire accepts a single message, so
        what display and bridge re-send lands in it (crash-only; ``snslab server`` does this)."""
        from wire import ServerEndpoint, Timing

        self.repo = database.repository() if hasattr(database, "repository") else database
        self.stall_s = stall_s
        # reference.path: only files in this folder (uploads land there); None = any file (library use)
        from pathlib import Path

        self.reference_dir = None if reference_dir is None else Path(reference_dir).resolve()
        self.loop = None
        self._lock = threading.RLock()
        self._errors: dict[uuid.UUID, str] = {}
        interrupted = self._interrupted() if resume else None
        self.endpoint = ServerEndpoint(bind, session=str(interrupted[0]) if interrupted else "idle",
                                       timing=timing or Timing(), **(endpoint_options or {}))
        self._started = False
        if interrupted is not None:
            try:
                self.start(interrupted[0], paused=interrupted[1] == "paused")
            except (SnslabError, ValueError) as err:  # one session that cannot be rebuilt must not keep the
                self.loop = None                      # server down: it starts idle and says why
                self.endpoint.session = "idle"
                why = _one_line(err)
                log.error("session %s was interrupted but cannot be resumed: %s", interrupted[0], why)
                self.repo.log_event(interrupted[0], "session", f"could not resume after a restart: {why}", None,
                                    "error")
        self.endpoint.start()
        self._started = True

    def _interrupted(self):
        """(id, status) of the newest live session left running or paused (with generations) by a server
        that died, or None."""
        import sqlalchemy as sa

        with self.repo.engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT s.id, s.status FROM sessions s WHERE s.status IN ('running', 'paused')"
                " AND s.config ? 'session' AND EXISTS (SELECT 1 FROM generations g WHERE g.session_id = s.id)"
                " ORDER BY s.updated_at DESC LIMIT 1")).first()
        return None if row is None else (row.id, row.status)

    @property
    def wire_address(self) -> str:
        return self.endpoint.endpoint

    def close(self) -> None:
        self.endpoint.close()

    # -- create -------------------------------------------------------------------------------------
    def create(self, spec: SessionCreate) -> uuid.UUID:
        from .config import parse_config
        from .probe_setup import build_generator, build_stages

        probe = parse_config(spec.probe | {"reference": self._probe_reference(spec.reference)}
                             if spec.reference.source != "none" else spec.probe)
        if probe.mode != "maximize" and spec.reference.source == "none":
            raise ServiceError(f"reference.source: the {probe.mode} probe needs a reference "
                               "(allowed: maximize-session, image, code)")
        from .limits import LimitError, check_session

        try:
            check_session(spec, probe)
        except LimitError as err:
            raise ServiceError(str(err)) from None
        generator = build_generator(probe)
        stages = build_stages(probe) if probe.mode != "maximize" else {}
        targets = spec.target_units or spec.units
        for t in targets:
            if t not in spec.units:
                raise ServiceError(f"target_units: {t!r} is not among units ({', '.join(spec.units)})")
        ref_code, _ = self._reference(spec, generator)  # fails early on a bad reference
        prior = self._checked_rates(spec, targets)
        feasible = None
        if spec.compute_check != "off":
            from .feasibility import check

            feasible = check(probe, generator, stages, on_ms=spec.on_ms, off_ms=spec.off_ms)
            if feasible.verdict == "too-slow" and spec.compute_check == "refuse":
                raise ServiceError(feasible.message() + "; compute_check = 'warn' creates it anyway")
        stored = {"session": spec.model_dump(mode="json"), "probe": probe.model_dump(mode="json")}
        if ref_code is not None:  # exact floats: a restart or a replay sees the very same reference
            stored["reference_code"] = [float(v) for v in ref_code]
        if prior is not None:  # the probe starts with the reference's re-measured rates (server.reference_phase)
            stored["reference_rates"], stored["reference_check"] = prior
        sid = self.repo.create_session(
            config=stored, seed=probe.seed, mode="simulated" if all(u.startswith("sim:") for u in spec.units) else "live",
            operator=spec.operator, subject_id=spec.subject_id, rig=spec.rig,
        )
        self.repo.add_units(sid, [(i, 0, key) for i, key in enumerate(spec.units)])
        self.repo.set_session_status(sid, "paused")
        self.repo.log_event(sid, "operator", f"created by {spec.operator}")
        if feasible is not None and feasible.verdict != "ok":
            self.repo.log_event(sid, "compute", feasible.message(), {
                "verdict": feasible.verdict, "compute_s": feasible.compute_s, "display_s": feasible.display_s,
                "lead_in_s": feasible.lead_in_s, "parts": feasible.parts}, level="warning")
        return sid

    @staticmethod
    def _probe_reference(src: ReferenceSpec) -> dict:
        """The probe config's reference: an image keeps its file (reloaded on restart when the generator
        cannot encode it); codes, given or from a maximize session, are stored with the session."""
        if src.source == "image" and src.path:
            from pathlib import Path

            return {"source": "image", "path": str(Path(src.path).expanduser().resolve())}
        return {"source": "code", "path": src.path if src.source == "code" else None}

    def _reference(self, spec: SessionCreate, generator):
        from .probe_setup import load_reference

        src = spec.reference
        if src.source == "none":
            return None, None
        if src.source == "maximize-session":
            if src.session_id is None:
                raise ServiceError("reference.session_id: required for source maximize-session")
            code = self.best_code(src.session_id)
            return code, generator.render(code[None])[0]
        return load_reference(src.source, self.reference_path(src.path), generator)

    def reference_path(self, name: str | None):
        """The file a reference.path names: inside the reference folder when there is one. Missing and not
        allowed give the same answer, so a request cannot probe which files exist on the server."""
        from pathlib import Path

        if self.reference_dir is None:
            if not name or not Path(name).is_file():
                raise ServiceError(f"reference.path: file not found: {name}")
            return Path(name)
        path = (self.reference_dir / (name or "")).resolve()
        if not name or not path.is_relative_to(self.reference_dir) or not path.is_file():
            raise ServiceError(f"reference.path: no reference {name!r} in the server's reference folder "
                               "(upload one with POST /api/references)")
        return path

    def best_code(self, session_id: uuid.UUID):
        """The code of the highest mean response among the scored candidates of a (maximize) session: the
        image its reference check re-measured, when it ran one; refused when that check failed."""
        from .reference_phase import SOURCE, best_stored_code, stored_check

        check = stored_check(self.repo, session_id)
        if check is not None:
            if not check.result.passed:
                raise ServiceError(f"reference.session_id: session {session_id} failed its {check.result.message(SOURCE)}")
            return check.code
        code = best_stored_code(self.repo.load_history(session_id))
        if code is None:
            raise ServiceError(f"reference.session_id: session {session_id} has no scored candidates")
        return code

    def _checked_rates(self, spec: SessionCreate, targets: list[str]):
        """(rates, summary) of a maximize-session reference's check for this session's target units: the
        probe's first reference estimate; None without a check or when a target unit was not in it."""
        if spec.reference.source != "maximize-session":
            return None
        from .reference_phase import stored_check

        check = stored_check(self.repo, spec.reference.session_id)
        if check is None:
            return None
        labels = [u.label for _, u in self.repo.units(spec.reference.session_id)]
        if not all(t in labels for t in targets):
            return None
        rates = check.reference_rates([labels.index(t) for t in targets])
        return [[float(v) for v in row] for row in rates], {
            "session_id": str(spec.reference.session_id), **check.result.as_dict()}

    # -- run ----------------------------------------------------------------------------------------
    def start(self, session_id: uuid.UUID, paused: bool = False) -> None:
        """Start (or, after a server restart, resume) a stored session on the rig; ``paused``: re-open it
        paused (its open generation is finished, no new one proposed until ``resume``)."""
        from .live import LiveLoop

        with self._lock:
            if self.loop is not None and not self.loop.finished.is_set():
                if self.loop.session_id == session_id:
                    return
                raise ServiceError(f"session: {self.loop.session_id} is running; stop it first")
            summary = self.repo.session_summary(session_id)
            if summary.status in ("completed", "aborted", "failed"):
                raise ServiceError(f"session: {session_id} is {summary.status}; it cannot be started again")
            from .stored import rebuild

            point = self.repo.load_resume_point(session_id)
            stored = rebuild(self.repo, session_id)
            spec = SessionCreate.model_validate(stored.live)
            runner = stored.runner(self.repo)
            targets = stored.runner_kwargs["target_positions"]
            loop = LiveLoop(self.endpoint, runner, session_id=session_id, unit_keys=spec.units,
                            target_positions=targets, on_ms=spec.on_ms, off_ms=spec.off_ms, repository=self.repo,
                            on_done=self._done, paused=paused, stall_s=self.stall_s)
            self.loop = loop
            self.repo.set_session_status(session_id, "paused" if paused else "running")
            resumed = point.last_completed is not None or point.in_flight is not None
            self.repo.log_event(session_id, "operator" if self._started else "session",
                                ("resumed after a restart" if resumed else "started") + (" (paused)" if paused else ""),
                                {"next_generation": point.next_index})
            batch = runner.resume(propose=not paused) if resumed else None
            if not self._started:  # the wire is not running yet: nothing can arrive before the session is open
                self.endpoint.session = loop.wire_session
                self.endpoint.known_sessions.add(loop.wire_session)
                loop.start(batch)
                return
            self.endpoint.set_session(loop.wire_session)  # applied in the loop before the start below
            self.endpoint.call_soon(lambda: loop.start(batch))

    def _done(self, loop) -> None:
        check = getattr(loop.runner, "check", None)
        if check is not None:
            from .reference_phase import EVENT_KIND, SOURCE

            if not check.passed:  # a maximize that did not leave baseline: nothing to probe
                self.repo.set_session_status(loop.session_id, "failed")
                self.repo.log_event(loop.session_id, EVENT_KIND, check.message(SOURCE), check.as_dict(), "error")
                return
            self.repo.log_event(loop.session_id, EVENT_KIND, (
                f"reference: re-measured rate {check.reference_rate_hz:.1f} +- {check.reference_se_hz:.1f} Hz over "
                f"{check.presentations} fresh presentations, blank screen {check.baseline_rate_hz:.1f} +- "
                f"{check.baseline_se_hz:.1f} Hz (ratio {check.ratio:.2f}, {check.z:.1f} standard errors): passed"),
                check.as_dict())
        self.repo.set_session_status(loop.session_id, "completed")
        self.repo.log_event(loop.session_id, "session", f"completed after {loop.runner.search.generation} generations",
                            {"presentations": loop.stats.dispatched, "duplicates": loop.stats.duplicates,
                             "rejected": loop.stats.rejected})

    def _require(self, session_id: uuid.UUID):
        if self.loop is None or self.loop.session_id != session_id or self.loop.finished.is_set():
            raise ServiceError(f"session: {session_id} is not running on this server")
        return self.loop

    def pause(self, session_id: uuid.UUID) -> None:
        loop = self._require(session_id)
        self.endpoint.call_soon(loop.pause)
        self.repo.set_session_status(session_id, "paused")
        self.repo.log_event(session_id, "operator", "paused")

    def resume(self, session_id: uuid.UUID) -> None:
        loop = self._require(session_id)
        self.repo.set_session_status(session_id, "running")
        self.repo.log_event(session_id, "operator", "resumed")
        self.endpoint.call_soon(loop.resume)

    def stop(self, session_id: uuid.UUID) -> None:
        """Stop for good: nothing more is shown; what was stored stays."""
        with self._lock:
            if self.loop is not None and self.loop.session_id == session_id and not self.loop.finished.is_set():
                loop = self.loop
                self.endpoint.call_soon(loop.halt)
            summary = self.repo.session_summary(session_id)
            if summary.status not in ("completed", "aborted", "failed"):
                self.repo.set_session_status(session_id, "aborted")
                self.repo.log_event(session_id, "operator", "stopped by the operator")

    def wait(self, session_id: uuid.UUID, timeout_s: float) -> bool:
        loop = self.loop
        return loop is not None and loop.session_id == session_id and loop.finished.wait(timeout_s)

    def clients(self) -> list[dict[str, Any]]:
        return [{"client_id": c.client_id, "role": c.role, "alive": c.alive} for c in self.endpoint.clients()]
