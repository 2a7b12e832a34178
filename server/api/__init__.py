"""The HTTP face of snslab: JSON API (FastAPI, OpenAPI docs) and the operator dashboard."""

from server.api.main import create_app, serve

__all__ = ["create_app", "serve"]
