"""``python -m server.db check | migrate | downgrade REV``: see server/db/cli.py."""

from server.db.cli import app

app(prog_name="python -m server.db")
