"""Server settings, read once from the environment (prefix ``SNSLAB_``) and an optional ``.env`` file.

One class for the whole server so the CLI, the FastAPI app and Alembic's ``env.py`` agree on where the data
lives and which database to use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where snslab keeps its data and which PostgreSQL it talks to.

    >>> s = Settings(data_dir="/tmp/lab")          # doctest: +SKIP
    >>> s.database_url is None                      # no DATABASE_URL: an embedded server under data_dir/pgdata
    """

    model_config = SettingsConfigDict(env_prefix="SNSLAB_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path(".snslab"), description="local data folder (embedded PostgreSQL, stimulus files)")
    # DATABASE_URL is the conventional name; SNSLAB_DATABASE_URL works too. Unset -> embedded server.
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "SNSLAB_DATABASE_URL"),
        description="PostgreSQL URL; unset starts an embedded PostgreSQL in data_dir/pgdata",
    )
    database_name: str = Field("snslab", description="database created inside the embedded server")
    stimulus_store: Literal["db", "files"] = Field(
        "db", description="stimulus images as BYTEA in the database, or as content-addressed files"
    )
    db_echo: bool = Field(False, description="log every SQL statement (debugging)")
    operator_token: SecretStr | None = Field(
        None, description="the token operators send to create and control sessions (SNSLAB_OPERATOR_TOKEN); "
        "unset: the server makes a random one and prints it"
    )
    viewer_token: SecretStr | None = Field(
        None, description="SNSLAB_VIEWER_TOKEN: read-only access to the API and dashboard (unset: only the operator "
        "token reads)")
    cors_origins: list[str] = Field(
        default_factory=list, description="SNSLAB_CORS_ORIGINS (JSON list): browser origins allowed to call the API "
        "from another site; empty (default) = none")

    @property
    def pgdata_dir(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def stimulus_dir(self) -> Path:
        return self.data_dir / "stimuli"
