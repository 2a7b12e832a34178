"""In-silico sweeps: thousands of probes (networks x layers x units x probes x seeds) on Ray, stored in
PostgreSQL as in-silico sessions grouped under one sweep, plus a Parquet table and a report.

- spec: the sweep file and its expansion into probes;
- store: the sweep tables (server/db/sweeps.py) read and written;
- task: one probe as a Ray task (the public in-silico API: run_probe + DatabaseRecorder);
- run: the driver (local Ray or a cluster, progress bar, resume);
- table / report: the Parquet table and the figures + HTML page.
"""
