"""Benchmark scripts (`python -m paresseg_jax.benchmarks.<name>`): they print a table and write JSON."""
