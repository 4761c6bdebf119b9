"""Benchmarks and the soak run, small: each asserts its JSON report and targets."""
