"""A small typed client of the snslab HTTP API, for scripts and for ``snslab session ...``.

    >>> from server.client import Client                                          # doctest: +SKIP
    >>> with Client("http://127.0.0.1:8000", token="...") as c:                   # doctest: +SKIP
    ...     s = c.create({"operator": "ana", "subject_id": "m01", "probe": {"mode": "maximize"}})
    ...     c.start(s.id)
    ...     c.session(s.id).status, c.neuron_health(s.id)["warning"]
    ('running', None)

Answers are the API's own pydantic models (server.api.schemas), so a script gets the fields it reads checked.
Every refusal raises ApiError with the server's one-line ``detail``. The token goes in ``Authorization: Bearer``
on every request: an operator token acts; a viewer token (or none, where reads are open) only reads.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Iterator

import httpx

from server.api.schemas import EventOut, GenerationOut, SessionDetailOut, SessionOut

SERVER_ENV = "SNSLAB_SERVER"
TOKEN_ENVS = ("SNSLAB_TOKEN", "SNSLAB_OPERATOR_TOKEN", "SNSLAB_VIEWER_TOKEN")
DEFAULT_SERVER = "http://127.0.0.1:8000"


def token_from_env() -> str | None:
    """$SNSLAB_TOKEN, else $SNSLAB_OPERATOR_TOKEN, else $SNSLAB_VIEWER_TOKEN (the first one set)."""
    for name in TOKEN_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class ApiError(RuntimeError):
    """The server refused (4xx/5xx) or could not be reached (status 0); ``detail`` is one line."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


class Client:
    """One server, one token. Use as a context manager (or call ``close``)."""

    def __init__(self, server: str | None = None, token: str | None = None, *, timeout_s: float = 30.0,
                 operator_name: str | None = None):
        self.server = (server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if operator_name:  # written to the event log with every action
            headers["X-Operator"] = operator_name
        self._http = httpx.Client(base_url=self.server + "/api", headers=headers, timeout=timeout_s, trust_env=False)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ------------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.server}: {exc}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail") or r.reason_phrase
            except ValueError:
                detail = r.text.strip().splitlines()[0] if r.text.strip() else r.reason_phrase
            raise ApiError(r.status_code, str(detail))
        return r

    def _json(self, method: str, path: str, **kw) -> Any:
        return self.request(method, path, **kw).json()

    # -- reads ---------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def sessions(self, limit: int = 100) -> list[SessionOut]:
        return [SessionOut.model_validate(s) for s in self._json("GET", "/sessions", params={"limit": limit})]

    def session(self, session_id: uuid.UUID | str) -> SessionDetailOut:
        return SessionDetailOut.model_validate(self._json("GET", f"/sessions/{session_id}"))

    def generations(self, session_id: uuid.UUID | str, unit: int = 0) -> list[GenerationOut]:
        return [GenerationOut.model_validate(g)
                for g in self._json("GET", f"/sessions/{session_id}/generations", params={"unit": unit})]

    def events(self, session_id: uuid.UUID | str, after_id: int = 0) -> list[EventOut]:
        return [EventOut.model_validate(e)
                for e in self._json("GET", f"/sessions/{session_id}/events", params={"after_id": after_id})]

    def neuron_health(self, session_id: uuid.UUID | str, **params) -> dict[str, Any]:
        """Reference responses over time, their running estimate and the drift/collapse warning (or None)."""
        return self._json("GET", f"/sessions/{session_id}/neuron", params=params)

    def rig(self, session_id: uuid.UUID | str) -> dict[str, Any]:
        """Display and bridge status, refresh rate, dropped frames, invalid presentations by reason, ETA."""
        return self._json("GET", f"/sessions/{session_id}/rig")

    def stream(self, session_id: uuid.UUID | str, last_event_id: int | None = None) -> Iterator[dict[str, Any]]:
        """Server-sent updates of one session, until closed: each the whole current view (as GET .../view)
        with the events since the previous update. (The server sends only the parts that changed; they are
        merged here.) ``last_event_id``: resume after that event."""
        import json

        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        with self._http.stream("GET", f"/sessions/{session_id}/stream", headers=headers, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                raise ApiError(r.status_code, r.json().get("detail", r.reason_phrase))
            data: list[str] = []
            event = "message"
            view: dict[str, Any] = {}
            for line in r.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif not line:
                    if data and event == "update":
                        update = json.loads("\n".join(data))
                        view = view | update if update.pop("partial", False) else update
                        yield dict(view)
                    data, event = [], "message"

    # -- the operator's verbs --------------------------------------------------------------------------
    def create(self, spec: dict[str, Any]) -> SessionDetailOut:
        """Store a new session (paused, nothing shown) from the same fields as POST /api/sessions."""
        return SessionDetailOut.model_validate(self._json("POST", "/sessions", json=spec))

    def upload_reference(self, data: bytes, kind: str = "image") -> str:
        """Store an image (or a .npy code, kind="code") on the server as a reference; returns the name to put
        in reference.path."""
        return self._json("POST", "/references", params={"kind": kind}, content=data,
                          headers={"Content-Type": "application/octet-stream"})["path"]

    def _verb(self, verb: str, session_id: uuid.UUID | str) -> SessionDetailOut:
        return SessionDetailOut.model_validate(self._json("POST", f"/sessions/{session_id}/{verb}"))

    def start(self, session_id: uuid.UUID | str) -> SessionDetailOut:
        return self._verb("start", session_id)

    def pause(self, session_id: uuid.UUID | str) -> SessionDetailOut:
        return self._verb("pause", session_id)

    def resume(self, session_id: uuid.UUID | str) -> SessionDetailOut:
        return self._verb("resume", session_id)

    def stop(self, session_id: uuid.UUID | str) -> SessionDetailOut:
        return self._verb("stop", session_id)
