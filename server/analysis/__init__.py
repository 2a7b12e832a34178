"""Offline analysis of stored sessions: re-counting from raw spike times, counterfactual re-scoring on
another representation stage, and export (NWB, CSV). Nothing here modifies a session's original rows;
results are stored as new analyses (server/db/analyses.py)."""
