"""The lowest layer of fedrs: config types, the method registry, pure aggregation (strategies),
privacy, attacks, sampling, update validation, metrics and the client-state store. It imports
nothing of fedrs above it (``errors``, ``io``, ``faults`` only), so methods, actors and the
orchestrator all build on it; ``tests/test_layers.py`` holds the contract."""
