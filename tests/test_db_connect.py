"""Where the database runs: DATABASE_URL or the embedded server, migrated on start, one clear error if broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from server.db.database import DatabaseUnavailable, alembic_config, connect, make_engine, mask_url
from server.settings import Settings

pytest_plugins = ["db_fixtures"]

ROOT = Path(__file__).resolve().parents[1]


def _settings(url) -> Settings:
    return Settings(DATABASE_URL=url if isinstance(url, str) else url.render_as_string(hide_password=False))


def test_settings_read_database_url_and_prefixed_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", "postgresql://a:b@db.lab/snslab")
    monkeypatch.setenv("SNSLAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SNSLAB_STIMULUS_STORE", "files")
    s = Settings()
    assert s.database_url == "postgresql://a:b@db.lab/snslab"
    assert s.data_dir == tmp_path and s.pgdata_dir == tmp_path / "pgdata"
    assert s.stimulus_store == "files"
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("SNSLAB_DATA_DIR")
    assert Settings().database_url is None and Settings().data_dir == Path(".snslab")


def test_unreachable_server_is_one_line_naming_the_url_without_password():
    with pytest.raises(DatabaseUnavailable) as err:
        connect(_settings("postgresql://lab:s3cret@127.0.0.1:1/snslab"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "127.0.0.1:1/snslab" in msg and "lab:***@" in msg and "s3cret" not in msg
    assert "cannot connect" in msg and "refused" in msg.lower()


def test_unusable_data_folder_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(DatabaseUnavailable) as err:
        connect(Settings(data_dir=blocker / "lab", database_url=None))
    msg = str(err.value)
    assert "\n" not in msg and "embedded PostgreSQL in" in msg and "did not start" in msg


def test_sqlite_is_refused():
    with pytest.raises(DatabaseUnavailable, match="needs PostgreSQL"):
        connect(_settings("sqlite:///snslab.db"))


def test_missing_database_names_it(pg_admin_url):
    with pytest.raises(DatabaseUnavailable) as err:
        connect(_settings(pg_admin_url.set(database="no_such_db_here")))
    assert "no_such_db_here" in str(err.value) and "does not exist" in str(err.value)


def test_schema_from_a_newer_snslab_is_refused(fresh_db_url):
    db_url = fresh_db_url
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
    engine.dispose()
    with pytest.raises(DatabaseUnavailable, match="revision f00dcafe is unknown"):
        connect(_settings(db_url))


def test_connect_migrates_an_empty_database(empty_db_url):
    db = connect(_settings(empty_db_url))
    try:
        with db.engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
        sid = db.repository().create_session(
            config={}, seed=1, mode="live", operator="op", subject_id="m1", rig="rig-a"
        )
        assert db.repository().session_summary(sid).mode == "live"
    finally:
        db.close()


def test_mask_url():
    assert mask_url("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
    assert (
        mask_url("postgresql+psycopg://postgres:@/snslab?host=/tmp/x")
        == "postgresql+psycopg://postgres@/snslab?host=/tmp/x"
    )


def _cli(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "server.db", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_command_line_prints_one_error_line_not_a_traceback():
    r = _cli({"DATABASE_URL": "postgresql://lab:s3cret@127.0.0.1:1/snslab"}, "check")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: database postgresql://lab:***@127.0.0.1:1/snslab: cannot connect")
    assert "Traceback" not in r.stderr and "s3cret" not in r.stderr


@pytest.mark.slow
def test_embedded_server_starts_in_the_data_folder_keeps_data_and_stops_after_exit():
    """No DATABASE_URL: a real PostgreSQL in data_dir/pgdata, migrated on start; a second start finds the
    data again; the server is stopped when the last process using it exits."""
    # not under pytest's basetemp: see db_fixtures.private_tmpdir
    tmp_path = Path(tempfile.mkdtemp(prefix="snslab-test-embedded-"))
    try:
        _embedded_roundtrip(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _embedded_roundtrip(tmp_path: Path) -> None:
    env = {"SNSLAB_DATA_DIR": str(tmp_path / "lab")}
    code = (
        "from server.db import connect\n"
        "db = connect()\n"
        "repo = db.repository()\n"
        "repo.create_session(config={}, seed=1, mode='insilico', operator='o', subject_id='s', rig='r')\n"
        "print(db.embedded, len(repo.list_sessions()), db.masked_url)\n"
        "db.close()\n"
    )
    env_all = {**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, **env}
    outs = []
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env_all, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.split())
    assert outs[0][:2] == ["True", "1"] and outs[1][:2] == ["True", "2"]
    assert str(tmp_path / "lab" / "pgdata") in outs[0][2]
    pgdata = tmp_path / "lab" / "pgdata"
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"
    assert not (pgdata / "postmaster.pid").exists()  # stopped with the last process
