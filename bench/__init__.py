"""Benchmarks of the serving stack: each script prints one table of ratios measured side by side."""
