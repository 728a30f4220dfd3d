"""Benchmarks (never run as tests). See benchmarks/RESULTS.md for recorded figures."""
