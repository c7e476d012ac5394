"""``orbit serve``: the HTTP API and the operator console, in one stateless process beside the
workers, reading and writing the same database through app.queries.

``app`` (the application), ``auth`` (tokens, sessions, roles, CSRF, the write limit), ``api``
(JSON routes), ``console`` and ``forms`` (pages, fragments and their forms), ``views`` and
``actions`` (what both read and change), ``events`` (server-sent events), ``fleet_metrics``
(Prometheus text of the fleet), ``state`` (what one process holds), ``command`` (the command).

Nothing is imported here: every ``orbit`` command builds its parser with ``command``'s
arguments, and importing the application with it (FastAPI, Starlette, Jinja) cost each command
0.36 s of its start, measured.
"""
