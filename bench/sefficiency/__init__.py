"""Sample-efficiency benchmark on model neurons with exact fronts (see docs/benchmarks.md).

Modules: ``zspace`` (DCT generator, ball, filters in coefficient space), ``neurons`` (the four model units),
``fronts`` (exact fronts, HV*, 2-D hypervolume), ``methods`` (the compared optimisers behind one ask/tell
interface), ``harness`` (budget accounting, found vs reported fronts), ``stats`` (paired tests, table, plot).
"""
