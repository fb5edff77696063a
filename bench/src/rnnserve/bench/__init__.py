"""Benchmarks: floors, load generation and reports under docs/benchmarks/."""
