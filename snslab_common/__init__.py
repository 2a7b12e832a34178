"""Numpy-only code shared by the server, the display client and the recording bridge.

One place per concept: the error base class and ``ConfigError``, the seeded random streams of a session,
the registry helper that builds a configured component by name, the rate-limited rejection log, and the
model neurons (with their Gabor filters and image checks) that the simulated rig and the in-silico runs
share. Nothing here imports ``server``, so the rig packages install without it.
"""
