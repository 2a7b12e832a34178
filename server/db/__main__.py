"""``python -m server.db [check|migrate|downgrade REV]``: open the configured database, migrate it, report.

Prints one line; a broken or unreachable database exits with status 2 and the DatabaseUnavailable message
(no traceback), which is also what the CLI shows at start.
"""

from __future__ import annotations

import sys

from server.db.database import DatabaseUnavailable, connect, current_revision, migrate
from server.settings import Settings


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "check"
    if action not in ("check", "migrate", "downgrade"):
        print("usage: python -m server.db [check|migrate|downgrade REVISION]", file=sys.stderr)
        return 64
    try:
        db = connect(Settings(), migrate_schema=action != "downgrade")
        try:
            if action == "downgrade":
                migrate(db.engine, argv[1] if len(argv) > 1 else "base")
            revision = current_revision(db.engine)
        finally:
            db.close()
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = "embedded" if db.embedded else "DATABASE_URL"
    print(f"ok: {db.masked_url} ({where}) schema revision {revision or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
