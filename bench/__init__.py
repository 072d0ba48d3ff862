"""Side-by-side benchmarks of the carvana pipeline against what a user would otherwise write.

``python -m bench`` runs every case (``--cases``, ``--repeats``, ``--smoke``) and writes
``bench/results.json`` and ``bench/results.md``. Timings alternate project and baseline runs so that both
see the same machine load, and report medians and the median of the paired ratios.
"""
