"""fedrs.datasets: Arrow-backed federated shards (Fed-RSIC partitions) and their builders.

This folder sits at the repository root, where a plain ``import datasets`` (Python puts the
current directory first on ``sys.path``) would find it before Hugging Face's ``datasets``,
which flwr-datasets needs. Imported under any name other than ``fedrs.datasets``, it therefore
hands the import over to the real site-packages module and replaces itself in ``sys.modules``.
"""

if __name__ != "fedrs.datasets":  # pragma: no cover - exercised by tests in a subprocess
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _path = [p for p in _sys.path if _os.path.abspath(p or ".") != _here]
    _spec = _machinery.PathFinder.find_spec(__name__, _path)
    if _spec is None or _spec.loader is None:
        raise ImportError(
            f"{__name__!r} resolved to fedrs's datasets/ folder and no other "
            f"{__name__!r} package is installed (run Python from outside the fedrs checkout)"
        )
    _module = _util.module_from_spec(_spec)
    _sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)
