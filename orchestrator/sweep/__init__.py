"""``fedrs sweep``: heterogeneity sweeps as Ray Tune trials, their results and reports.

``spec`` (the sweep file, its trials, the folder's layout) <- ``builds`` (shared data builds)
<- ``results`` (the per-trial table) <- ``run`` (Tune, trials, Ctrl-C) and ``report``
(grouped statistics, ``paired`` comparisons, plots) <- ``tables`` (README tables regenerated
from stored results). Each module imports only those to its left.
"""
