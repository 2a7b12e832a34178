"""Shared test set-up: headless plotting, threads kept small on this 2-core machine."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SNSLAB_TESTING", "1")
