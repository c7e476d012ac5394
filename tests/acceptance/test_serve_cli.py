"""``orbit token`` and ``orbit serve`` on the command line: secrets shown once, one line when the
input is wrong, and no unauthenticated server on an address others can reach."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from sqlalchemy import Engine, text

from app import access

Orbit = Callable[..., subprocess.CompletedProcess[str]]


def test_token_create_prints_the_secret_once_as_its_last_line(engine: Engine, orbit: Orbit) -> None:
    """The secret is the last line of stdout, alone; the database keeps only its hash."""
    made = orbit("token", "create", "ci", "--role", "operator")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.splitlines()[-1]
    assert secret.startswith("orbit_") and " " not in secret
    with engine.connect() as conn:
        row = conn.execute(text("SELECT role, secret_hash FROM api_tokens WHERE name = 'ci'")).one()
    assert row.role == "operator" and row.secret_hash == access.digest(secret)
    listed = json.loads(orbit("token", "list", "--json").stdout)
    assert [(t["name"], t["role"]) for t in listed] == [("ci", "operator")]
    assert secret not in orbit("token", "list").stdout


def test_token_revoke_removes_it(engine: Engine, orbit: Orbit) -> None:
    """After revoke the token is gone; revoking it again is an error."""
    orbit("token", "create", "ci")
    assert orbit("token", "revoke", "ci").returncode == 0
    again = orbit("token", "revoke", "ci")
    assert (
        again.returncode == 2 and again.stderr.strip() == "orbit: no token named 'ci' (see orbit token list)"
    )


def test_bad_token_commands_are_one_line_and_exit_2(engine: Engine, orbit: Orbit) -> None:
    """A bad role, a bad name, a duplicate and a missing name are each one line, exit 2."""
    orbit("token", "create", "ci")
    for args, says in (
        (["token", "create", "x", "--role", "root"], "role must be one of viewer, operator, admin"),
        (["token", "create", "bad name"], "token name"),
        (["token", "create", "ci"], "exists already"),
        (["token", "create"], "orbit token create NAME"),
    ):
        result = orbit(*args)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM api_tokens")).scalar_one() == 1


def test_serve_refuses_a_public_address_without_tokens(engine: Engine, orbit: Orbit) -> None:
    """Without any token, orbit serve will not bind 0.0.0.0: one line naming the fix, exit 2."""
    result = orbit("serve", "--host", "0.0.0.0", "--port", "0", env={"LOG_LEVEL": "warning"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "orbit: no API token exists, so orbit serve would answer anyone on 0.0.0.0: create one with "
        "`orbit token create NAME --role admin`, or serve on 127.0.0.1"
    ]


def test_serve_refuses_bad_settings_in_one_line(engine: Engine, orbit: Orbit) -> None:
    """A bad port is one line and exit 2, before anything listens."""
    result = orbit("serve", env={"SERVE_PORT": "99999"})
    assert result.returncode == 2 and result.stderr.startswith("orbit: invalid setting SERVE_PORT=")
    result = orbit("serve", "--port", "x")
    assert result.returncode == 2
