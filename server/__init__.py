"""snslab server: the Stretch-and-Squeeze engine, the session orchestrator, storage and the dashboard."""

__version__ = "0.1.0"
