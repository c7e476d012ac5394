"""Fixtures for the reliability suite: a private database server the tests may restart."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from app.database import make_engine, migrate, scratch_database
from app.embedded import embedded_url, restart


@dataclass
class PrivateServer:
    """An embedded PostgreSQL owned by one test module, with a migrated database on it."""

    url: str
    data_dir: Path

    def restart(self) -> None:
        restart(self.data_dir)

    def engine(self) -> Engine:
        return make_engine(self.url)


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    """Always embedded, even with ORBIT_TEST_DATABASE_URL set: a shared server cannot be restarted."""
    data_dir = tmp_path_factory.mktemp("private-pg")
    with scratch_database(embedded_url(data_dir)) as url:
        migrate(url)
        yield PrivateServer(url, data_dir)


@pytest.fixture
def private_env(private_server: PrivateServer, worker_env: dict[str, str]) -> dict[str, str]:
    """Worker environment pointing at the private server."""
    return {**worker_env, "DATABASE_URL": private_server.url}


# --- figures -------------------------------------------------------------------------------------
# Each scenario reports what it measured (runs lost, executed twice, time to recover); the table is
# printed at the end of the session, so `make reliability` ends with the figures.

FULL_SIZE = os.environ.get("ORBIT_RELIABILITY_FULL") == "1"
_figures: list[dict[str, Any]] = []


def size(short: int, full: int) -> int:
    """The scenario's size: short under `make test`, full under `make reliability`."""
    return full if FULL_SIZE else short


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    def report(**values: Any) -> None:
        _figures.append({"scenario": request.node.name.removeprefix("test_"), **values})

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _figures:
        return
    terminalreporter.section("reliability figures" + (" (full size)" if FULL_SIZE else " (short)"))
    for row in _figures:
        scenario = row.pop("scenario")
        terminalreporter.write_line(f"{scenario}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
