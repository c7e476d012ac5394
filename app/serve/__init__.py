"""``orbit serve``: the HTTP API and the operator console, in one stateless process beside the
workers, reading and writing the same database through app.queries.

``app`` (the application), ``auth`` (tokens, sessions, roles, CSRF, the write limit), ``api``
(JSON routes), ``console`` and ``forms`` (pages, fragments and their forms), ``views`` and
``actions`` (what both read and change), ``events`` (server-sent events), ``fleet_metrics``
(Prometheus text of the fleet), ``state`` (what one process holds), ``command`` (the command).
"""

from app.serve.app import create_app

__all__ = ["create_app"]
