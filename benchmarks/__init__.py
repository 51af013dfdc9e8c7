"""Benchmarks for sampled-softmax: ``python -m benchmarks`` (not shipped in the wheel)."""
