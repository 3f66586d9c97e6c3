"""Benchmarks: one script each (``python bench/<name>.py``), ending with one JSON line."""
