"""The project's error base class: commands catch ``SnslabError`` and print its one-line message."""

from __future__ import annotations


class SnslabError(Exception):
    """An expected failure whose message is one line fit for the operator (no traceback needed)."""


class ConfigError(SnslabError, ValueError):
    """A bad configuration value. The message is one line naming the field and what is allowed."""

    def __init__(self, field: str, problem: str, allowed: object | None = None):
        msg = f"{field}: {problem}"
        if allowed is not None:
            if isinstance(allowed, (list, tuple, set, frozenset)):
                allowed = ", ".join(sorted(map(str, allowed)))
            msg += f" (allowed: {allowed})"
        super().__init__(msg)
        self.field = field
