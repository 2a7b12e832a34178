"""Persistence of recordings in PostgreSQL: settings -> database (embedded or DATABASE_URL) -> repository.

The engine (server/engine) never imports this package; the session runner passes data in and out as the
plain records of server.db.records.
"""

from server.db.database import Database, DatabaseUnavailable, connect, mask_url, migrate
from server.db.records import (
    FrontMember,
    GenerationData,
    GenerationImage,
    GenerationStateError,
    GenerationStats,
    InFlightGeneration,
    PresentationState,
    PresentationTiming,
    Proposal,
    ResponseRecord,
    ResumePoint,
    ScoreRecord,
    SessionHistory,
    SessionNotFound,
    SessionSummary,
    StorageError,
    UnitSpec,
    WriteResult,
    group_unit_rows,
)
from server.db.repository import Repository
from server.db import sweeps as _sweeps  # noqa: F401  (issue 16: the sweep tables join the metadata)
from server.png import encode_png

__all__ = [
    "Database",
    "DatabaseUnavailable",
    "FrontMember",
    "GenerationData",
    "GenerationImage",
    "GenerationStateError",
    "GenerationStats",
    "InFlightGeneration",
    "PresentationState",
    "PresentationTiming",
    "Proposal",
    "Repository",
    "ResponseRecord",
    "ResumePoint",
    "ScoreRecord",
    "SessionHistory",
    "SessionNotFound",
    "SessionSummary",
    "StorageError",
    "UnitSpec",
    "WriteResult",
    "connect",
    "encode_png",
    "group_unit_rows",
    "mask_url",
    "migrate",
]

# issue 14 tables (spike_trains, recordings, analyses): on the same metadata wherever the models are imported
from server.db import analysis_models as _analysis_models  # noqa: E402,F401
