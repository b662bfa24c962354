"""fedrs.benchmarks."""
