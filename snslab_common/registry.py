"""Build a configured component by name: generators, stages, subjects and recording sources alike."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from snslab_common.errors import ConfigError


def accepted_params(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters a registered class takes (``self`` and ``_private`` ones left out)."""
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p
        for p in list(sig.parameters.values())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not p.name.startswith("_")
    }


def make_from_registry(
    kind: str, registry: Mapping[str, type], name: str, params: Mapping[str, Any], *, what: str | None = None
) -> Any:
    """Build ``registry[name](**params)``; unknown names, unknown or missing params -> ConfigError.

    ``kind`` is the config field ("generator", "stage", "subject", "adapter"); parameter errors name
    "<kind>.<param>". ``what`` is the noun in messages (default ``kind``, e.g. "recording source").
    """
    what = what or kind
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(kind, f"unknown {what} {name!r}", sorted(registry))
    cls = registry[name]
    accepted = accepted_params(cls)
    for key in params:
        if key not in accepted:
            raise ConfigError(f"{kind}.{key}", f"unknown parameter for {what} {name!r}", sorted(accepted))
    for p in accepted.values():
        if p.default is inspect.Parameter.empty and p.name not in params:
            raise ConfigError(f"{kind}.{p.name}", f"required by {what} {name!r}")
    try:
        return cls(**params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(kind, f"bad parameters for {what} {name!r}: {exc}") from exc
