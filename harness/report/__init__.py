"""``harness report``: the study's figures, statistics and tables, from the results database.

Modules (import what you need; nothing heavy is imported here):

* :mod:`~harness.report.stats` — pure correlation statistics (Pearson, Spearman, Kendall with
  seeded bootstrap CIs, partial correlation, leave-one-out influence, regression band);
* :mod:`~harness.report.data` — read the database read-only into tidy frames, with the
  protocol guard (FIDs pool only within one evaluation protocol);
* :mod:`~harness.report.analysis` — the statistics tables over every facet and pooled scope
  (one point per encoder: the mean over its seeds);
* :mod:`~harness.report.noise` — the seed-to-seed noise floor (pooled within-group σ) and which
  differences exceed it; :mod:`~harness.report.findings` — the first section, "What this study
  found", computed from the data; :mod:`~harness.report.samples` — sample grids read from the
  eval artifacts (``samples/*.npz``);
* :mod:`~harness.report.figures` — the figure registry (``FIGURES``); each figure returns the
  exact data it plots; :mod:`~harness.report.labels` places point labels without overlap;
* :mod:`~harness.report.published` — the reproduction gap and the encoder-only study against
  the papers' published FIDs (``--against-published``);
* :mod:`~harness.report.render` — ``index.html`` (self-contained), ``report.md``,
  ``tables/*.csv``, ``figures/``; :mod:`~harness.report.build` — ``build_report`` end to end;
* :mod:`~harness.report.schema` — the columns the report reads (its contract with the store).

Tests and benchmarks build their databases the way a study does: synthetic artifacts written
through the real plan and artifact writers (``tests/synthetic_study.py``) and loaded by the
real :func:`harness.store.ingest.ingest`.
"""
