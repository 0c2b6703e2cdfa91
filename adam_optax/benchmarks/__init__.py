"""The pieces of ``adam-optax bench``: trees, timers, the steps measured, the report."""
