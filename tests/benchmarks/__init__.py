"""On-demand benchmarks (not collected by the default pytest run). See ``tests/benchmarks/core.py``."""
