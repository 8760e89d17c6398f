"""Evaluation: generation metrics through torch-fidelity, reference statistics, the eval stage,
and linear probing.

Modules (import what you need; nothing here imports torch):

* :mod:`harness.eval.fd` — float64 Gaussian statistics and the Fréchet distance;
* :mod:`harness.eval.features` — torch-fidelity extractors, offline weights, random-weights
  variants, the extraction loop (fixed batch size, TF32 off);
* :mod:`harness.eval.substitute` — the substitute CNN extractor for the CPU study;
* :mod:`harness.eval.reference` — reference statistics (cached by content key; ADM ``.npz``);
* :mod:`harness.eval.generation` — class-balanced labels, per-index seeds, resumable shards;
* :mod:`harness.eval.fidelity` — FID / IS / KID / precision-recall / FD-DINOv2 from features;
* :mod:`harness.eval.driver` — ``evaluate_checkpoint`` (the ``eval`` stage);
* :mod:`harness.eval.probe` — ``run_probe`` / ``probe_features`` (the ``probe`` stage).
"""
