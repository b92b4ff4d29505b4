"""Continuous learning: adapter lines (a named sequence of adapters on one base, one of them
active and served as "line:NAME"), their activation history, and rollback."""
