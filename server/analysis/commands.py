"""rescore and export commands (kept apart from recount so each stays short)."""

from __future__ import annotations


def register_more(app, _session_id, _errors, _progress, _repo, _fail) -> None:
    pass
