"""scripts/benchmark.py's sections, one module each, and what they share (:mod:`.common`)."""
