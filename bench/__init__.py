"""Benchmarks for issue 7, "the pipeline is never the bottleneck".

``python -m bench`` (or ``python bench/run.py``) runs them all; ``--quick`` runs a small
version of each (what CI runs, see ``tests/test_bench_smoke.py``). Each benchmark prints its
figures and writes ``bench/results/<name>.json``. Every ratio is measured against its
baseline in the same run: the machine is shared and noisy. See ``docs/PERFORMANCE.md``.
"""
