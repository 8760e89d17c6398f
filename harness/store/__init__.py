"""The DuckDB results store: versioned schema, the single writer (ingest), read-only queries.

* :func:`harness.store.ingest.ingest` — load artifacts, plans and submissions into
  ``results/harness.duckdb`` (the only writer);
* :func:`harness.store.db.open_readonly` — a read-only connection (report, notebooks);
* :func:`harness.store.query.run_query` — ``harness query``: SQL to table / CSV / JSON text.

The schema lives in ``schema/NNN_*.sql`` and is documented in ``analysis/SCHEMA.md``.
Importing this package does not import torch (nor duckdb: modules import it where needed).
"""
