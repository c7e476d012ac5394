"""Passwords masked wherever a URL or DSN is printed: every form libpq takes."""

from __future__ import annotations

import pytest

from app.database import mask_url


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("postgresql://u:s3cret@db:5432/orbit", "postgresql://u:***@db:5432/orbit"),
        ("postgresql://u@db/orbit?password=s3cret", "postgresql://u@db/orbit?password=***"),
        ("postgresql://u@db/orbit?sslmode=require&password=s3cret&x=1",
         "postgresql://u@db/orbit?sslmode=require&password=***&x=1"),
        ("postgresql://u@db/orbit?pass%77ord=s3cret", "postgresql://u@db/orbit?pass%77ord=***"),
        ("postgresql://u@db/orbit?sslpassword=s3cret", "postgresql://u@db/orbit?sslpassword=***"),
        ("postgresql://a:s3@cret@db:x/orbit", "postgresql://a:***@db:x/orbit"),
        ("postgresql://u:s3/cret@db/orbit", "postgresql://u:***@db/orbit"),
        ("host=db password=s3cret dbname=orbit", "host=db password=*** dbname=orbit"),
        ("host=db password = 's3 \\'cret' dbname=orbit", "host=db password = *** dbname=orbit"),
        ("no postgresql://u:s3cret@db/orbit now", "no postgresql://u:***@db/orbit now"),
        ("postgresql://u@db/orbit?application_name=password", "postgresql://u@db/orbit?application_name=password"),
    ],
)  # fmt: skip
def test_every_form_of_password_libpq_takes_is_masked(given: str, shown: str) -> None:
    """user:password@, ?password= (its key percent-encoded too), sslpassword, and key=value DSNs."""
    assert mask_url(given) == shown
