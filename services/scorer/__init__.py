"""The scorer: the only holder of gold labels. Baselines, scheduling, PGR, integrity checks."""
