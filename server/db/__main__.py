"""``python -m server.db check | migrate | downgrade REV``: see server/db_commands.py."""

from server.db_commands import app

app(prog_name="python -m server.db")
