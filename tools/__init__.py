"""The repository's tools: the shared run.sh helpers (``*.sh``) and the benchmarks
(``benchmark_*.py``, run from the repository with it on ``PYTHONPATH``; tests import them as
``tools.benchmark_kd``)."""
