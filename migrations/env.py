"""Alembic environment: the same settings as the server decide which database is migrated.

Run from the repository root: ``alembic upgrade head`` / ``alembic downgrade base``. With DATABASE_URL unset
this starts (or joins) the embedded PostgreSQL in the data folder, exactly as the server would. The server
itself calls :func:`server.db.database.migrate`, which hands its own connection in via
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from server.db.database import make_engine, resolve_url
from server.db.models import Base
from server.settings import Settings

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    """Emit SQL without a database (``alembic upgrade head --sql``)."""
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        settings = Settings()
        url = settings.database_url or "postgresql+psycopg://"
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        url, _embedded = resolve_url(Settings())
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
