"""Pipelines shipped with Orbit. Every module here is imported by the worker at start-up."""
