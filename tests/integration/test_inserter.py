"""The serve process's single-run writer (app.serve.inserter) against the real database: runs of
concurrent requests written together, each answered with its own id; keys kept within a batch;
one refused run failing alone; an unreachable database failing every waiting request at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from app.database import make_engine
from app.enqueue import new_run
from app.queries.runs import NewRun
from app.serve.inserter import Inserter
from tests.support.http import free_port


@pytest.fixture
def inserter(engine: Engine) -> Iterator[Inserter]:
    writer = Inserter(engine, deadline=30)
    yield writer
    writer.close()


def run(**fields: object) -> NewRun:
    return new_run("test.echo", {"n": fields.pop("n", 0)}, **fields)  # type: ignore[arg-type]


async def insert_all(inserter: Inserter, runs: list[NewRun]) -> list[object]:
    return await asyncio.gather(*(inserter.insert(r) for r in runs), return_exceptions=True)


def rows(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, (params->>'n')::int FROM runs")).all())  # type: ignore[arg-type]


def test_concurrent_requests_get_their_own_committed_runs(engine: Engine, inserter: Inserter) -> None:
    outcomes = asyncio.run(insert_all(inserter, [run(n=n) for n in range(300)]))
    ids = [run_id for run_id, inserted in outcomes]  # type: ignore[misc]
    assert all(inserted for _, inserted in outcomes)  # type: ignore[misc]
    assert len(set(ids)) == 300
    assert rows(engine) == dict(zip(ids, range(300), strict=True))  # each id holds its own params


def test_a_key_is_held_within_a_batch_and_timeouts_are_kept(engine: Engine, inserter: Inserter) -> None:
    asks = [run(n=1, key="k"), run(n=2), run(n=3, key="k"), run(n=4, timeout=5)]
    (first, new), (_, plain_new), (second, again), (timed, _) = asyncio.run(insert_all(inserter, asks))  # type: ignore[misc]
    assert (new, plain_new, again) == (True, True, False)
    assert second == first
    with engine.connect() as conn:
        timeout = conn.execute(
            text("SELECT extract(epoch FROM timeout) FROM runs WHERE id = :id"), {"id": timed}
        )
        assert timeout.scalar_one() == 5
    assert sorted(rows(engine).values()) == [1, 2, 4]


def test_a_run_the_database_refuses_fails_alone(engine: Engine, inserter: Inserter) -> None:
    bad = run(n=99)._replace(params_json='{"n": 99, broken')
    outcomes = asyncio.run(insert_all(inserter, [run(n=1), bad, run(n=2), run(n=3)]))
    assert isinstance(outcomes[1], SQLAlchemyError)
    assert "json" in str(outcomes[1]).lower()
    assert sorted(rows(engine).values()) == [1, 2, 3]


def test_an_unreachable_database_fails_every_waiting_request_at_once() -> None:
    gone = make_engine(f"postgresql+psycopg://orbit@127.0.0.1:{free_port()}/orbit", timeout=2)
    writer = Inserter(gone, deadline=5)
    try:
        outcomes = asyncio.run(insert_all(writer, [run(n=n) for n in range(20)]))
        assert all(isinstance(outcome, SQLAlchemyError) for outcome in outcomes)
        # Not retried run by run (each retry could wait out a deadline): the first write carries
        # the first request, the second all the others, and each fails once for all of its runs.
        assert len({id(outcome) for outcome in outcomes}) == 2
    finally:
        writer.close()
        gone.dispose()
