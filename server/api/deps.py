"""What every route needs, in one place: the settings, the repository, the session service and the operator
check (the token is a SecretStr of server.settings.Settings).

The app keeps them on ``app.state`` (set by ``create_app``); routes ask for them through these dependencies
so a test can build the app around any database and service.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from server.db import Database, Repository
from server.service import SessionService
from server.settings import Settings

log = logging.getLogger("snslab.api")

TOKEN_ENV = "SNSLAB_OPERATOR_TOKEN"


def operator_token(explicit: str | SecretStr | None = None, settings: Settings | None = None) -> SecretStr:
    """The token operators must send: the explicit one, else the settings' (SNSLAB_OPERATOR_TOKEN), else a
    random one that is logged (and printed by ``serve``) so the operator at the server can read it."""
    if isinstance(explicit, SecretStr):
        explicit = explicit.get_secret_value()
    if explicit and explicit.strip():
        return SecretStr(explicit.strip())
    configured = (settings or Settings()).operator_token
    if configured is not None and configured.get_secret_value().strip():
        return SecretStr(configured.get_secret_value().strip())
    token = secrets.token_urlsafe(18)
    log.warning("%s is not set; this server's operator token is %s", TOKEN_ENV, token)
    return SecretStr(token)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.database


def get_repository(request: Request) -> Repository:
    return request.app.state.repository


def get_service(request: Request) -> SessionService | None:
    """The SessionService, or None when the app serves recordings read-only."""
    return request.app.state.service


def require_service(request: Request) -> SessionService:
    service = request.app.state.service
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this server has no session service (read-only)")
    return service


_bearer = HTTPBearer(auto_error=False, description="the operator token (SNSLAB_OPERATOR_TOKEN)")


def require_operator(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless the request carries ``Authorization: Bearer <operator token>``."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "operator token required (Authorization: Bearer <token>)",
                            headers=challenge)
    expected: SecretStr = request.app.state.operator_token
    if not secrets.compare_digest(credentials.credentials.encode(), expected.get_secret_value().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong operator token", headers=challenge)


READ_HINT = "Authorization: Bearer <token>, or ?access_token=<token> on GET"


def require_reader(request: Request) -> None:
    """401 unless a read carries the viewer or the operator token: ``Authorization: Bearer <token>``, or for
    GET the query parameter ``access_token`` (a browser's EventSource cannot set headers). Other methods are
    the operator's verbs, which check the operator token themselves."""
    if request.method not in ("GET", "HEAD"):
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else request.query_params.get("access_token", "")
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"read token required ({READ_HINT})", headers=challenge)
    accepted = [t.get_secret_value() for t in (request.app.state.operator_token, request.app.state.viewer_token)
                if t is not None]
    if not any(secrets.compare_digest(token.encode(), t.encode()) for t in accepted):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong token", headers=challenge)


Reader = Depends(require_reader)

RepositoryDep = Annotated[Repository, Depends(get_repository)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[SessionService | None, Depends(get_service)]
RequiredServiceDep = Annotated[SessionService, Depends(require_service)]
Operator = Depends(require_operator)
