"""API tokens without a database: roles, names, secrets and what is stored of them."""

from __future__ import annotations

import pytest

from app.access import AccessError, Role, check_name, digest, new_secret


def test_roles_are_ordered_and_parsed_by_name() -> None:
    """viewer < operator < admin, and a role is read from its name, case and spaces aside."""
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.parse(" Operator ") is Role.OPERATOR
    assert str(Role.ADMIN) == "admin"


def test_an_unknown_role_is_refused_naming_the_choices() -> None:
    """A role that does not exist is one line that lists the roles."""
    with pytest.raises(AccessError, match="viewer, operator, admin"):
        Role.parse("root")


@pytest.mark.parametrize("name", ["ci", "grafana.prod", "alice@example.com", "a-1_b", "x" * 100])
def test_token_names_that_are_accepted(name: str) -> None:
    """Letters, digits and . _ @ - , up to 100 characters, pass."""
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", "with space", "x" * 101, "semi;colon", "nul\x00", "é"])
def test_token_names_that_are_refused(name: str) -> None:
    """Anything else is refused in one line."""
    with pytest.raises(AccessError, match="token name"):
        check_name(name)


def test_secrets_are_random_say_what_they_are_and_only_their_hash_is_kept() -> None:
    """Each secret is new, starts with orbit_, and its digest is a fixed-size SHA-256 hex string."""
    one, two = new_secret(), new_secret()
    assert one != two and one.startswith("orbit_") and len(one) > 40
    assert len(digest(one)) == 64 and digest(one) == digest(one) != digest(two)
    assert one not in digest(one)
