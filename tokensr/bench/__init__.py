"""Side-by-side benchmarks of SR methods (``tokensr bench``): per-image metrics and timing,
summary tables (CSV, Markdown) and comparison figures. See ``tokensr.bench.runner``."""

from __future__ import annotations

from tokensr.bench.datasets import Dataset, Sample, load_dataset
from tokensr.bench.runner import BenchConfig, BenchResult, run_bench
from tokensr.bench.spec import MethodSpec, parse_method, parse_methods

__all__ = [
    "BenchConfig",
    "BenchResult",
    "Dataset",
    "MethodSpec",
    "Sample",
    "load_dataset",
    "parse_method",
    "parse_methods",
    "run_bench",
]
