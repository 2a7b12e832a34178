"""Persistence of recordings in PostgreSQL: settings -> database (embedded or DATABASE_URL) -> repository.

The engine (server/engine) never imports this package; the session runner passes data in and out.
"""

from server.db.database import Database, DatabaseUnavailable, connect, mask_url, migrate
from server.db.repository import (
    GenerationStateError,
    PresentationTiming,
    Proposal,
    Repository,
    ResponseRecord,
    ScoreRecord,
    SessionNotFound,
    StorageError,
    UnitSpec,
    WriteResult,
)

__all__ = [
    "Database",
    "DatabaseUnavailable",
    "GenerationStateError",
    "PresentationTiming",
    "Proposal",
    "Repository",
    "ResponseRecord",
    "ScoreRecord",
    "SessionNotFound",
    "StorageError",
    "UnitSpec",
    "WriteResult",
    "connect",
    "mask_url",
    "migrate",
]
