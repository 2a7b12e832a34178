"""Assembles the HTTP server: the JSON API under /api (OpenAPI docs at /docs) and the dashboard at /.

    >>> db = connect(Settings())                                         # doctest: +SKIP
    >>> app = create_app(Settings(), SessionService(db), database=db)     # doctest: +SKIP
    >>> serve("0.0.0.0", 8000, Settings(), wire_bind="tcp://*:5555")      # doctest: +SKIP  (all of it + uvicorn)

Without a service the app serves stored sessions read-only (the verbs answer 503).
"""

from __future__ import annotations

import signal
import threading
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import SecretStr

from server import __version__
from server.settings import Settings

from . import errors
from .deps import TOKEN_ENV, Reader, operator_token as resolve_token
from .routes import dashboard as dashboard_routes, health, references, sessions, stimuli

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "dashboard"

DESCRIPTION = f"""Closed-loop Stretch-and-Squeeze probes on a rig: create a session (probe, generator, stages,
units, population, budget, presentation timing, reference), start, pause, resume and stop it, and follow its
generations, fronts, presentations, images and events.

Creating and controlling sessions needs the operator token: `Authorization: Bearer <token>` (the server's
`{TOKEN_ENV}`). Reads need the operator token or the read-only viewer token (`SNSLAB_VIEWER_TOKEN`), as that
header or, on GET, as the query parameter `access_token`; `/api/health` needs none. Every refusal answers one
line in `detail`."""


def create_app(
    settings: Settings | None = None, service=None, *, database=None, operator_token: str | SecretStr | None = None,
    viewer_token: str | None = None,
) -> FastAPI:
    """The app on ``database`` (default: the settings' database, opened here and closed at shutdown).

    With a SessionService the operator's verbs work; without one the app serves stored sessions read-only.
    ``operator_token`` defaults to the settings' (SNSLAB_OPERATOR_TOKEN), else a random one (logged).
    """
    settings = settings or Settings()
    owned = None
    if database is None:
        from server.db import connect

        database = owned = connect(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if getattr(app.state, "push_hub", None) is not None:
            await app.state.push_hub.close()
        if owned is not None:
            owned.close()

    app = FastAPI(title="snslab", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.database = database
    app.state.repository = service.repo if service is not None else database.repository()
    app.state.service = service
    app.state.operator_token = resolve_token(operator_token, settings)
    viewer = viewer_token or (settings.viewer_token.get_secret_value().strip() if settings.viewer_token else "")
    app.state.viewer_token = SecretStr(viewer) if viewer else None
    errors.install(app)
    if settings.cors_origins:  # closed unless configured: no cross-site browser reads
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    api = APIRouter(prefix="/api")
    api.include_router(health.router)
    api.include_router(sessions.router, dependencies=[Reader])
    api.include_router(stimuli.router, dependencies=[Reader])
    api.include_router(references.router)
    api.include_router(dashboard_routes.router, dependencies=[Reader])
    api.include_router(dashboard_routes.open_router)  # whoami: what the caller's token allows
    app.include_router(api)

    app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR), name="dashboard")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app


@contextmanager
def _stopped_by_sigterm():
    """uvicorn shuts down on SIGTERM and then raises the signal again; with the default action that kills the
    process before the session service and the embedded PostgreSQL are closed (the database would outlive
    the server). Here it becomes SystemExit, so `kill`, systemd and `docker stop` stop as cleanly as Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None, *,
          wire_bind: str = "tcp://127.0.0.1:5555", log_level: str = "info", service_options: dict | None = None) -> None:
    """Open the database, start the session service (ZeroMQ on ``wire_bind``) and serve HTTP until stopped."""
    import uvicorn

    from server.db import connect
    from server.service import SessionService

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("snslab").setLevel(logging.INFO)  # sessions re-opened, re-shows, clients, refusals
    settings = settings or Settings()
    database = connect(settings)
    service = SessionService(database, bind=wire_bind, resume=True, reference_dir=settings.data_dir / "references",
                             **(service_options or {}))
    try:
        app = create_app(settings, service, database=database)
        print(f"snslab {__version__}: dashboard http://{host}:{port}/  API docs http://{host}:{port}/docs")
        print(f"database {database.masked_url}; display and bridge connect to {service.wire_address}")
        if settings.operator_token is None:
            print(f"operator token (set {TOKEN_ENV} to choose one): {app.state.operator_token.get_secret_value()}")
        # open dashboard streams end within a few seconds of Ctrl-C (browsers reconnect to the next server)
        with _stopped_by_sigterm():
            uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3)
    finally:
        service.close()
        database.close()
