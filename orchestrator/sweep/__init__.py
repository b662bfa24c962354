"""``fedrs sweep``: heterogeneity sweeps as Ray Tune trials, their results and reports.

``spec`` (the sweep file, its trials, the folder's layout) <- ``builds`` (shared data builds)
<- ``results`` (the per-trial table) <- ``run`` (Tune, trials, Ctrl-C) and ``report``
(grouped statistics, ``paired`` comparisons, plots). Each module imports only those to its
left. The README tables regenerated from stored results (``fedrs sweep tables``) are
``fedrs.benchmarks.tables``, above both sweeps and benchmarks.
"""
