"""Flow control with real worker processes: a pipeline's cap and its groups' caps held across
three workers (seen from the runs' own start and end times, not only from the table), `orbit
limit` raising and lowering a cap while runs flow, `orbit limits` saying where each limit comes
from, and bad values refused in one line with exit 2."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text

from app import enqueue
from tests.support.waiting import wait_until

Orbit = Callable[..., subprocess.CompletedProcess[str]]
Spawn = Callable[..., subprocess.Popen[str]]


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def _enqueue(engine: Engine, count: int, seconds: float, group: str | None = None) -> None:
    with engine.begin() as conn:
        for _ in range(count):
            enqueue("test.capped", {"seconds": seconds}, group=group, connection=conn)


def _spans(engine: Engine) -> list[tuple[float, float, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT result, run_group FROM runs WHERE status = 'succeeded'")).all()
    return [(r.result["start"], r.result["end"], r.run_group) for r in rows]


def _most_at_once(spans: list[tuple[float, float, str | None]]) -> int:
    """The most runs whose [start, end) overlap, from their own clocks."""
    events = sorted([(start, 1) for start, _, _ in spans] + [(end, -1) for _, end, _ in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _succeeded(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM runs WHERE status = 'succeeded'")).scalar_one())


def test_three_workers_hold_a_pipelines_cap_and_each_groups(engine: Engine, spawn_worker: Spawn) -> None:
    """test.capped: concurrency 2, group_concurrency 1 (tests/support/pipelines.py); 3 workers of
    concurrency 3 could run 9 at once."""
    _enqueue(engine, 6, 0.3, group="acme")
    _enqueue(engine, 6, 0.3)
    for _ in range(3):
        spawn_worker("--concurrency", "3")
    wait_until(lambda: _succeeded(engine) == 12, timeout=90, what="the 12 runs to succeed")
    spans = _spans(engine)
    assert _most_at_once(spans) == 2
    with engine.connect() as conn:  # what health reads to tell a held backlog from a dead fleet
        registered = conn.execute(text("SELECT limits -> 'test.capped' FROM workers")).scalars().all()
    assert (
        registered
        == [{"concurrency": 2, "rate_count": None, "rate_seconds": None, "group_concurrency": 1}] * 3
    )
    assert _most_at_once([s for s in spans if s[2] == "acme"]) == 1


def test_a_rate_holds_over_several_windows_across_workers(engine: Engine, spawn_worker: Spawn) -> None:
    """test.rated: 4 a second. 14 runs take at least three windows, and no second holds five starts."""
    with engine.begin() as conn:
        for _ in range(14):
            enqueue("test.rated", {}, connection=conn)
    spawn_worker("--concurrency", "4")
    spawn_worker("--concurrency", "4")
    wait_until(lambda: _succeeded(engine) == 14, timeout=60, what="the 14 rated runs")
    with engine.connect() as conn:
        starts = (
            conn.execute(
                text(
                    "SELECT EXTRACT(EPOCH FROM started_at)::float FROM run_starts, generate_series(1, starts)"
                    " ORDER BY 1"
                )
            )
            .scalars()
            .all()
        )
        claimed = (
            conn.execute(text("SELECT EXTRACT(EPOCH FROM started_at)::float FROM runs ORDER BY 1"))
            .scalars()
            .all()
        )
    assert len(starts) == 14
    assert all(later - first >= 1.0 for first, later in zip(starts, starts[4:], strict=False))
    assert claimed[-1] - claimed[0] >= 3.0 - 0.1  # the runs' own start times agree, to the claim's lag


def test_orbit_limit_lowers_and_raises_a_cap_while_runs_flow(
    engine: Engine, spawn_worker: Spawn, orbit: Orbit
) -> None:
    assert "concurrency 1" in _ok(orbit("limit", "test.cap*", "--concurrency", "1"))
    _enqueue(engine, 6, 0.3)
    spawn_worker("--concurrency", "4")
    spawn_worker("--concurrency", "4")
    wait_until(lambda: _succeeded(engine) >= 3, timeout=60, what="three runs one at a time")
    held = _spans(engine)
    assert _most_at_once(held) == 1
    _ok(orbit("limit", "test.cap*", "--concurrency", "4", "--group-concurrency", "4"))
    _enqueue(engine, 8, 0.5)
    wait_until(lambda: _succeeded(engine) == 14, timeout=60, what="the rest under the raised cap")
    later = [s for s in _spans(engine) if s[0] > max(end for _, end, _ in held)]
    assert 2 < _most_at_once(later) <= 4
    shown = json.loads(_ok(orbit("limits", "--json")))
    capped = next(p for p in shown["pipelines"] if p["pipeline"] == "test.capped")
    assert capped["concurrency"] == "4 (override test.cap*)"
    assert capped["group_concurrency"] == "4 (override test.cap*)"
    assert "override removed" in _ok(orbit("limit", "test.cap*", "--clear"))
    assert "2 (code)" in _ok(orbit("limits"))


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["limit", "x.*", "--concurrency", "0"], "--concurrency must be a whole number from 1"),
        (["limit", "x.*", "--concurrency", "-3"], "--concurrency must be a whole number from 1"),
        (["limit", "x.*", "--rate", "fast"], "--rate 'fast': expected a count per window"),
        (["limit", "x.*", "--group-concurrency", "0"], "--group-concurrency must be"),
        (["limit", "x.*"], "give --concurrency, --rate or --group-concurrency"),
        (["limit", "x.*", "--clear", "--concurrency", "2"], "--clear takes no limits"),
        (["enqueue", "test.capped", "--group", ""], "group must be text of 1 to 200"),
        (["enqueue", "test.capped", "--group", "a\x01" * 150], "group must be text of 1 to 200"),
    ],
)
def test_bad_limits_are_one_line_and_exit_2(engine: Engine, orbit: Orbit, args: list[str], said: str) -> None:
    result = orbit(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert said in result.stderr and result.stderr.count("\n") == 1, result.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM limits")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0
