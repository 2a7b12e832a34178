"""Every refused request answers one line: ``{"detail": "..."}`` (422 also lists every problem)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from server.db import DatabaseUnavailable, SessionNotFound, StorageError
from server.engine.base import ConfigError
from server.service import ServiceError


def one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _field(loc) -> str:
    return ".".join(str(p) for p in loc) or "request"


def _jsonable(err: dict) -> dict:
    """pydantic's error dict without the parts JSON cannot carry (the exception in ``ctx``)."""
    import json

    out = {k: v for k, v in err.items() if k in ("type", "loc", "msg", "input")}
    if "ctx" in err:
        plain = (str, int, float, bool, type(None))
        out["ctx"] = {k: v if isinstance(v, plain) else str(v) for k, v in err["ctx"].items()}
    try:  # NaN/Infinity inputs (or anything else JSON cannot carry) are echoed as text, never a 500
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError):
        out["input"] = repr(out.get("input"))[:200]
        out.pop("ctx", None)
    return out


def install(app: FastAPI) -> None:
    def reply(status: int):
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": one_line(exc)}, status_code=status)

        return handler

    app.add_exception_handler(SessionNotFound, reply(404))
    app.add_exception_handler(ServiceError, reply(400))
    app.add_exception_handler(ConfigError, reply(400))
    app.add_exception_handler(StorageError, reply(409))  # after SessionNotFound: handlers match the class first
    app.add_exception_handler(DatabaseUnavailable, reply(503))

    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        """PostgreSQL went away mid-request (connection refused or dropped): 503, like /api/health."""
        return JSONResponse({"detail": "database unavailable; try again when it is back"}, status_code=503)

    from sqlalchemy.exc import InterfaceError, OperationalError

    app.add_exception_handler(OperationalError, database_down)
    app.add_exception_handler(InterfaceError, database_down)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_jsonable(e) for e in exc.errors()]
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        detail = f"{_field(first['loc'])}: {first['msg']}"
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)
