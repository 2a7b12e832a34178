"""Alembic migrations against a real PostgreSQL: up from empty, down to nothing, and in step with the models."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.db.database import current_revision, make_engine, migrate
from server.db.models import Base

pytest_plugins = ["db_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"sessions", "units", "generations", "stimuli", "presentations", "responses", "scores", "events"}
SWEEP_TABLES = {"sweeps", "sweep_probes"}  # 0003_issue16
SPIKE_TABLES = {"spike_trains", "recordings", "analyses", "analysis_results"}  # 0003_issue14
HEAD = "0005_spike_steps"


def _relations(engine) -> dict[str, set[str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'S', 'i')"
            )
        ).all()
    out: dict[str, set[str]] = {"r": set(), "v": set(), "S": set(), "i": set()}
    for name, kind in rows:
        out[kind].add(name)
    return out


def test_upgrade_builds_everything_from_empty_and_downgrade_base_removes_it(empty_db_url):
    engine = make_engine(empty_db_url)
    try:
        assert _relations(engine)["r"] == set()
        migrate(engine, "head")
        rel = _relations(engine)
        assert rel["r"] == TABLES | SWEEP_TABLES | SPIKE_TABLES | {"alembic_version"}
        assert rel["v"] == {"unit_responses"}
        assert {"uq_generations_in_flight", "uq_generations_planned", "uq_presentations_active_slot",
                "uq_stimuli_sha256"} <= rel["i"]
        assert current_revision(engine) == HEAD
        with engine.connect() as conn:  # PNG bytes and float64 codes are stored without a compression attempt
            storage = dict(conn.execute(sa.text(
                "SELECT attrelid::regclass::text || '.' || attname, attstorage FROM pg_attribute"
                " WHERE (attrelid = 'stimuli'::regclass AND attname = 'data')"
                " OR (attrelid = 'presentations'::regclass AND attname = 'code')")).all())
        assert storage == {"stimuli.data": "e", "presentations.code": "e"}

        migrate(engine, "-1")  # below 0005_spike_steps: only a check constraint changes
        assert current_revision(engine) == "0004_reference_check"
        migrate(engine, "-1")  # below 0004_reference_check: the check's kinds go, the tables stay
        assert current_revision(engine) == "0003_issue14"
        assert _relations(engine)["r"] == TABLES | SWEEP_TABLES | SPIKE_TABLES | {"alembic_version"}
        migrate(engine, "-1")  # one step down (below 0003_issue14) and up again keeps the rest intact
        assert current_revision(engine) == "0003_issue16"
        assert _relations(engine)["r"] == TABLES | SWEEP_TABLES | {"alembic_version"}
        migrate(engine, "head")
        migrate(engine, "-5")  # down to the first revision (below 0002, 0003_*, 0004, 0005) and up again
        assert current_revision(engine) == "0001" and _relations(engine)["r"] == TABLES | {"alembic_version"}
        migrate(engine, "head")

        migrate(engine, "base")
        rel = _relations(engine)
        assert rel["r"] == {"alembic_version"} and rel["v"] == set() and rel["S"] == set()
        assert current_revision(engine) is None

        migrate(engine, "head")  # and back up again: downgrade left nothing behind that blocks it
        assert _relations(engine)["r"] == TABLES | SWEEP_TABLES | SPIKE_TABLES | {"alembic_version"}
    finally:
        engine.dispose()


def test_models_and_migrations_describe_the_same_schema(db_engine):
    with db_engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_alembic_command_line_uses_database_url(empty_db_url):
    url = empty_db_url.render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": url}
    alembic = [sys.executable, "-m", "alembic"]
    up = subprocess.run([*alembic, "upgrade", "head"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    engine = make_engine(empty_db_url)
    try:
        assert _relations(engine)["r"] == TABLES | SWEEP_TABLES | SPIKE_TABLES | {"alembic_version"}
        down = subprocess.run([*alembic, "downgrade", "base"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert down.returncode == 0, down.stderr
        assert _relations(engine)["r"] == {"alembic_version"}
    finally:
        engine.dispose()


def test_two_processes_migrating_at_once_both_succeed(empty_db_url):
    """Server and a CLI started together: the advisory lock makes the second wait, then find nothing to do."""
    engines = [make_engine(empty_db_url) for _ in range(2)]
    errors: list[BaseException] = []

    def run(engine):
        try:
            migrate(engine)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert current_revision(engines[0]) == HEAD
    finally:
        for e in engines:
            e.dispose()
