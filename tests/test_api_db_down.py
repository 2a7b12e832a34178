"""PostgreSQL unreachable while the API is up: every route answers 503 with one line (like /api/health),
never a 500 or a traceback."""

import uuid
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from server.api.main import create_app
from server.db.database import make_engine
from server.db.repository import Repository
from server.settings import Settings

TOKEN = "db-down-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class DownDatabase:
    """A database whose server is not there (nothing listens on port 1 of loopback)."""

    engine: object
    masked_url: str = "postgresql://snslab@127.0.0.1:1/snslab"
    embedded: bool = False

    def repository(self) -> Repository:
        return Repository(self.engine)


@pytest.fixture
def client(tmp_path):
    engine = make_engine("postgresql://snslab@127.0.0.1:1/snslab?connect_timeout=2")
    app = create_app(Settings(data_dir=tmp_path), None, database=DownDatabase(engine), operator_token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    engine.dispose()


@pytest.mark.parametrize("path", ["/api/health", "/api/sessions", f"/api/sessions/{uuid.uuid4()}",
                                  f"/api/sessions/{uuid.uuid4()}/events", f"/api/sessions/{uuid.uuid4()}/view"])
def test_reads_answer_503_in_one_line_while_the_database_is_down(client, path):
    r = client.get(path, headers=AUTH)
    assert r.status_code == 503, (path, r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "database" in detail
