"""Benchmarks: ratios measured side by side in one run (timing goals live here, not in tests)."""
