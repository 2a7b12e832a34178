"""Every operator action is written to the session's event log with who asked and from where (the service
logs what it did; this is the request behind it: the audit line)."""

from __future__ import annotations

import uuid

from fastapi import Request


def log_action(request: Request, repo, session_id: uuid.UUID, verb: str) -> None:
    """Write an operator's action to the session's event log with who asked (X-Operator, else 'operator
    token') and from where."""
    who = (request.headers.get("x-operator") or "").strip()[:100] or "operator token"
    where = request.client.host if request.client else "?"
    repo.log_event(session_id, "operator", f"{verb} requested by {who} from {where}",
                   {"by": who, "from": where, "verb": verb})

