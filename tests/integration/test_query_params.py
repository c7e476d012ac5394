"""Parameters the hot statements send pre-encoded read back on the server as what they stand for."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from app.queries.common import on_driver, text_array

# Any text PostgreSQL can hold: no NUL, no lone surrogate.
_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_TEXT | st.sampled_from(['"', "\\", ",", "{}", "NULL", " a ", "'"]), max_size=6))
def test_a_text_array_reads_back_as_the_same_list(engine: Engine, values: list[str]) -> None:
    with engine.connect() as conn, on_driver(conn) as driver:
        row = driver.execute("SELECT CAST(%s AS text[])", (text_array(values),)).fetchone()
    assert row is not None
    assert row[0] == values
