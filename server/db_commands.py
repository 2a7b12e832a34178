"""``snslab db check | migrate | downgrade REV`` (also ``python -m server.db``): open the configured database
(DATABASE_URL, or the embedded PostgreSQL in the data folder), migrate it, and report in one line.

A broken or unreachable database exits with status 2 and the DatabaseUnavailable message (no traceback),
which is also what the server shows at start.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="The experiment database: check it, migrate it to the newest schema, or step it back.")


def _report(action: str, revision: str = "base") -> None:
    from server.db.database import DatabaseUnavailable, connect, current_revision, migrate
    from server.settings import Settings

    try:
        db = connect(Settings(), migrate_schema=action != "downgrade")
        try:
            if action == "downgrade":
                migrate(db.engine, revision)
            current = current_revision(db.engine)
        finally:
            db.close()
    except DatabaseUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    where = "embedded" if db.embedded else "DATABASE_URL"
    typer.echo(f"ok: {db.masked_url} ({where}) schema revision {current or 'none'}")


@app.command(help="Open the database (migrating it if needed) and print its URL and schema revision.")
def check() -> None:
    _report("check")


@app.command(help="Migrate the database to the newest schema (what the server does at start).")
def migrate() -> None:
    _report("migrate")


@app.command(help="Step the schema back to REVISION (default: base, i.e. drop every table).")
def downgrade(revision: str = typer.Argument("base", help="Alembic revision id, or base")) -> None:
    _report("downgrade", revision)
