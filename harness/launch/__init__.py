"""Submission and job tracking (``executor.py`` is the only module that imports submitit).

* :mod:`harness.launch.executor`: executors, sbatch parameters, arrays, in-job helpers;
* :mod:`harness.launch.submit`: plan → submitted jobs (or a local run of the DAG);
* :mod:`harness.launch.jobs`: stage states from disk + batched, cached ``squeue`` polling;
* :mod:`harness.launch.snapshot`: the code snapshot queued jobs run.
"""
