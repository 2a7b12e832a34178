"""Is the server up, and can it reach its database?"""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException

from server import __version__

from ..deps import DatabaseDep, ServiceDep
from ..errors import one_line
from ..schemas import ErrorOut, HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut, responses={503: {"model": ErrorOut}})
def health(database: DatabaseDep, service: ServiceDep) -> HealthOut:
    """200 when the database answers; 503 with one line when it does not."""
    try:
        with database.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        raise HTTPException(503, f"database {database.masked_url}: {one_line(getattr(exc, 'orig', None) or exc)}")
    return HealthOut(
        status="ok",
        version=__version__,
        database=database.masked_url,
        embedded_database=database.embedded,
        service=service is not None,
        wire=getattr(service, "wire_address", None),
    )
