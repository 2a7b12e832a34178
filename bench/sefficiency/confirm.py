"""Front confirmation lives in the engine now (server/engine/confirm.py); re-exported for the benchmark."""

from server.engine.confirm import FrontConfirmation

__all__ = ["FrontConfirmation"]
