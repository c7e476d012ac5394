"""Flow control enforced by the claim (app.queries.claim) against the real database: a
pipeline's concurrency, its rate, its groups' concurrency, overrides winning over the code, and
unlimited pipelines claimed beside limited ones. Claims go through ``queries.exchange``, the
worker's turn; several claimers at once must never pass a cap."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import timedelta

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from app import enqueue, queries
from app.database import libpq_url
from app.limits import Limits, limits
from app.queries import Success
from app.queries.common import RUNS_CHANNEL

DEFAULTS = {"test.echo": (3, 60.0), "test.noop": (3, 60.0)}


def add(engine: Engine, count: int, pipeline: str = "test.echo", group: str | None = None) -> list[int]:
    with engine.begin() as conn:
        return [enqueue(pipeline, {"n": n}, group=group, connection=conn) for n in range(count)]


def claim(
    engine: Engine,
    flow: Mapping[str, Limits],
    limit: int = 10,
    worker: str = "w",
    done: list[int] = (),  # type: ignore[assignment]
) -> list[queries.ClaimedRun]:
    successes = [Success(run_id, 1, "null") for run_id in done]
    with engine.begin() as conn:
        _, claimed = queries.exchange(
            conn, worker_id=worker, successes=successes, limit=limit, defaults=DEFAULTS, limits=flow
        )
    return claimed


def running(engine: Engine, pipeline: str = "test.echo") -> int:
    with engine.connect() as conn:
        sql = "SELECT count(*) FROM runs WHERE status = 'running' AND pipeline = :p"
        return int(conn.execute(text(sql), {"p": pipeline}).scalar_one())


def test_a_concurrency_cap_holds_across_claimers_and_frees_with_an_outcome(engine: Engine) -> None:
    add(engine, 6)
    flow = {"test.echo": limits(concurrency=2)}
    first = claim(engine, flow, worker="a")
    assert len(first) == 2
    assert claim(engine, flow, worker="b") == []
    again = claim(engine, flow, worker="a", done=[first[0].id])  # the turn that frees a slot claims it
    assert len(again) == 1 and running(engine) == 2


def test_a_limited_pipeline_never_holds_back_an_unlimited_one(engine: Engine) -> None:
    add(engine, 5)
    add(engine, 5, "test.noop")
    claimed = claim(engine, {"test.echo": limits(concurrency=1)}, limit=10)
    assert sorted(run.pipeline for run in claimed) == ["test.echo"] + ["test.noop"] * 5


def test_group_concurrency_limits_each_group_and_not_runs_without_one(engine: Engine) -> None:
    add(engine, 3, group="acme")
    add(engine, 3, group="globex")
    add(engine, 2)
    claimed = claim(engine, {"test.echo": limits(group_concurrency=1)}, limit=10)
    with engine.connect() as conn:
        groups = (
            conn.execute(
                text("SELECT run_group FROM runs WHERE id = ANY(:ids)"), {"ids": [r.id for r in claimed]}
            )
            .scalars()
            .all()
        )
    assert sorted(groups, key=lambda g: (g is None, g or "")) == ["acme", "globex", None, None]
    assert claim(engine, {"test.echo": limits(group_concurrency=1)}, limit=10) == []


def test_a_rate_counts_starts_in_its_window_even_after_they_finish(engine: Engine) -> None:
    add(engine, 5)
    flow = {"test.echo": limits(rate="3/h")}
    first = claim(engine, flow)
    assert len(first) == 3
    assert claim(engine, flow, done=[run.id for run in first]) == []  # finished, still started this hour
    with engine.begin() as conn:  # an hour later
        conn.execute(text("UPDATE run_starts SET started_at = started_at - interval '61 minutes'"))
    assert len(claim(engine, flow)) == 2


def test_a_rate_counts_only_the_claims_inside_its_window(engine: Engine) -> None:
    """run_starts keeps a row per claim with a running total: the count is the latest total less
    the total before the window's first row, whatever the rows before it."""
    add(engine, 12)
    flow = {"test.echo": limits(rate="5/h")}
    assert len(claim(engine, flow, limit=2)) == 2
    _age_starts(engine, minutes=61)  # out of the window
    assert len(claim(engine, flow, limit=1)) == 1
    _age_starts(engine, minutes=30)  # the first out, the second 30 minutes old
    assert len(claim(engine, flow, limit=3)) == 3
    assert len(claim(engine, flow, limit=10)) == 1  # 1 + 3 in the window
    _age_starts(engine, minutes=31)  # the single start leaves the window, the three stay
    assert len(claim(engine, flow, limit=10)) == 1
    assert _starts(engine) == [(2, 2), (1, 3), (3, 6), (1, 7), (1, 8)]


def test_a_clock_gone_back_never_dates_a_start_before_the_previous_one(engine: Engine) -> None:
    add(engine, 4)
    flow = {"test.echo": limits(rate="3/h")}
    assert len(claim(engine, flow, limit=1)) == 1
    with engine.begin() as conn:  # as if the server's clock had since been set back 10 minutes
        conn.execute(text("UPDATE run_starts SET started_at = started_at + interval '10 minutes'"))
    assert len(claim(engine, flow, limit=1)) == 1
    with engine.connect() as conn:
        times = conn.execute(text("SELECT started_at FROM run_starts ORDER BY total")).scalars().all()
    assert times[0] == times[1]
    assert len(claim(engine, flow, limit=10)) == 1


def _age_starts(engine: Engine, minutes: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE run_starts SET started_at = started_at - make_interval(mins => :m)"), {"m": minutes}
        )


def _starts(engine: Engine) -> list[tuple[int, int]]:
    """run_starts' rows in time order: (starts, total)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT starts, total FROM run_starts ORDER BY started_at, total")).all()
    return [(starts, total) for starts, total in rows]


def test_an_override_wins_over_the_code_and_limits_what_the_code_does_not(engine: Engine) -> None:
    add(engine, 5)
    add(engine, 5, "test.noop")
    with engine.begin() as conn:
        queries.set_limit(conn, "test.*", "test.%", limits(concurrency=1).as_claim(), "tester")
    claimed = claim(engine, {"test.echo": limits(concurrency=3)})
    assert sorted(run.pipeline for run in claimed) == ["test.echo", "test.noop"]
    with engine.begin() as conn:
        assert queries.clear_limit(conn, "test.*")
    assert len(claim(engine, {"test.echo": limits(concurrency=3)})) == 2 + 4  # 3 echo in all, 4 noop


def test_an_override_the_worker_has_not_seen_yet_gives_its_pipeline_no_room(engine: Engine) -> None:
    """A worker without limits claims without flow control while it believes the limits table
    empty (overrides=False, until its heartbeat looks again): an override set meanwhile holds
    its pipelines back, never lets them run past it, and leaves the others alone."""
    add(engine, 1)
    add(engine, 3, "test.noop")

    def unaware() -> list[str]:
        with engine.begin() as conn:
            _, claimed = queries.exchange(conn, worker_id="w", limit=10, defaults=DEFAULTS, overrides=False)
        return sorted(run.pipeline for run in claimed)

    assert unaware() == ["test.echo"] + ["test.noop"] * 3
    add(engine, 3)
    with engine.begin() as conn:
        queries.set_limit(conn, "test.ec*", "test.ec%", limits(concurrency=5).as_claim(), "ops")
    add(engine, 2, "test.noop")
    assert unaware() == ["test.noop"] * 2  # the cap has room for four echo runs: not seen yet
    assert running(engine) == 1
    assert sorted(run.pipeline for run in claim(engine, {})) == ["test.echo"] * 3  # once seen


def test_a_cancel_and_a_rescue_free_their_slots(engine: Engine) -> None:
    add(engine, 4)
    flow = {"test.echo": limits(concurrency=2)}
    first, second = claim(engine, flow)
    with engine.begin() as conn:
        queries.cancel(conn, first.id)
    assert len(claim(engine, flow, worker="b")) == 1
    with engine.begin() as conn:  # w's heartbeat went silent: the rescuer gives its run back
        conn.execute(
            text("UPDATE runs SET heartbeat_at = now() - interval '1 hour' WHERE id = :id"), {"id": second.id}
        )
        queries.recover(conn, timedelta(seconds=60))
    assert len(claim(engine, flow, worker="c")) == 1


def test_an_outcome_of_a_limited_pipeline_wakes_the_idle_workers(engine: Engine, direct_url: str) -> None:
    """Room freed by an outcome is announced on the channel new runs use; other outcomes are not."""
    add(engine, 2)
    add(engine, 1, "test.noop")
    flow = {"test.echo": limits(concurrency=1)}
    echo, noop = sorted(claim(engine, flow), key=lambda run: run.pipeline)
    with psycopg.connect(libpq_url(direct_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {RUNS_CHANNEL}")
        claim(engine, flow, limit=0, done=[noop.id])
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        claim(engine, flow, limit=0, done=[echo.id])
        heard = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in heard] == [RUNS_CHANNEL]


def test_an_outcome_under_an_override_alone_wakes_the_idle_workers(engine: Engine, direct_url: str) -> None:
    """A pipeline limited only by `orbit limit` (its code has no limits) wakes them too."""
    add(engine, 2)
    with engine.begin() as conn:
        queries.set_limit(conn, "test.ec*", "test.ec%", limits(concurrency=1).as_claim(), "ops")
    (echo,) = claim(engine, {})
    with psycopg.connect(libpq_url(direct_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {RUNS_CHANNEL}")
        claim(engine, {}, limit=0, done=[echo.id])
        heard = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in heard] == [RUNS_CHANNEL]


def test_concurrent_claimers_never_pass_the_cap(engine: Engine) -> None:
    """Eight threads, each its own connection, claim and complete as fast as they can; after
    every turn the running count is read: it never passes the cap."""
    add(engine, 400)
    flow = {"test.echo": limits(concurrency=3)}
    seen: list[int] = []
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            held: list[int] = []
            while True:
                claimed = claim(engine, flow, limit=2, worker=name, done=held)
                held = [run.id for run in claimed]
                seen.append(running(engine))
                if not held and not _pending(engine):
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert max(seen) <= 3 and 3 in seen
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs WHERE status = 'succeeded'")).scalar_one() == 400


def _pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM runs WHERE status = 'pending'")).scalar_one())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cap=st.integers(1, 4),
    group_cap=st.integers(1, 2),
    groups=st.lists(st.sampled_from(["a", "b", None]), min_size=1, max_size=12),
    steps=st.lists(
        st.tuples(st.sampled_from(["x", "y", "z"]), st.integers(1, 4), st.booleans()), max_size=12
    ),
)
def test_random_caps_groups_and_claimers_never_pass_a_cap(
    engine: Engine, cap: int, group_cap: int, groups: list[str | None], steps: list[tuple[str, int, bool]]
) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE runs, run_starts RESTART IDENTITY CASCADE"))
        for group in groups:
            enqueue("test.echo", {}, group=group, connection=conn)
    flow = {"test.echo": limits(concurrency=cap, group_concurrency=group_cap)}
    held: dict[str, list[int]] = {"x": [], "y": [], "z": []}
    for worker, limit, finish in steps:
        done, held[worker] = (held[worker], []) if finish else ([], held[worker])
        held[worker] += [run.id for run in claim(engine, flow, limit=limit, worker=worker, done=done)]
        with engine.connect() as conn:
            counts = conn.execute(
                text("SELECT run_group, count(*) FROM runs WHERE status = 'running' GROUP BY run_group")
            ).all()
        assert sum(n for _, n in counts) <= cap
        assert all(n <= group_cap for group, n in counts if group is not None)


def test_concurrent_claimers_never_pass_a_rate(engine: Engine) -> None:
    """Eight threads claim under a rate of 30 an hour from 200 runs: exactly 30 start."""
    add(engine, 200)
    flow = {"test.echo": limits(rate="30/h")}
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            for _ in range(20):
                claim(engine, flow, limit=3, worker=name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert running(engine) == 30
    assert _starts(engine)[-1][1] == 30


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    count=st.integers(1, 6),
    steps=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 40)), min_size=1, max_size=12),
)
def test_random_claims_and_time_under_a_rate_claim_exactly_its_room(
    engine: Engine, count: int, steps: list[tuple[int, int]]
) -> None:
    """Claims of random sizes, with random time passing between them (every start made that many
    minutes older), under a rate of ``count`` an hour: each claim takes exactly the room the starts
    of the last hour leave, counted here from the runs' own start times."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE runs, run_starts RESTART IDENTITY CASCADE"))
        for _ in range(40):
            enqueue("test.echo", {}, connection=conn)
    flow = {"test.echo": limits(rate=f"{count}/h")}
    starts: list[float] = []  # minutes ago, from the claims
    for limit, minutes in steps:
        starts = [ago + minutes for ago in starts]
        _age_starts(engine, minutes)
        room = count - sum(1 for ago in starts if ago < 60)
        claimed = claim(engine, flow, limit=limit)
        assert len(claimed) == min(limit, max(room, 0), 40 - len(starts))
        starts += [0.0] * len(claimed)
