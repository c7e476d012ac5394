"""Orbit's benchmark: ``python -m bench [--quick]`` (or ``make bench``) prints a table of figures."""
