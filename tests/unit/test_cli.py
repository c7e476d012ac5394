"""Command lines refused before anything is connected: ``orbit``'s arguments (app.cli) and the
worker's (app.worker), each error one line on stderr with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

import app.worker
from app import cli

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


def _refused(capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int], *argv: str) -> str:
    """Run ``main(argv)``, expecting exit status 2; its stderr, checked to be one line."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1, stderr
    return stderr


@pytest.fixture(autouse=True)
def _unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Were any of these to get as far as connecting, it would fail instead of starting a server.
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)


def test_orbit_without_a_command_shows_the_commands_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """The help lists the commands; nothing is run."""
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert "COMMAND" in out
    assert all(name in out for name in ("enqueue", "status", "runs", "pause", "drain", "outcomes"))


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """``orbit --help`` and ``orbit enqueue --help`` print their usage and succeed."""
    for argv in (["--help"], ["enqueue", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 0
    assert "--max-attempts" in capsys.readouterr().out


def test_an_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The error names the bad choice and points to --help, without argparse's usage block."""
    stderr = _refused(capsys, cli.main, "launch")
    assert stderr.startswith("orbit: ")
    assert "'launch'" in stderr and "(see --help)" in stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [("abc", "a run id is a whole number, not 'abc'"), ("0", "a run id is a positive number, not '0'")],
)
@pytest.mark.parametrize("command", ["status", "resume", "cancel"])
def test_a_run_id_must_be_a_positive_whole_number(
    capsys: pytest.CaptureFixture[str], command: str, value: str, expected: str
) -> None:
    """Each command taking a run id says what is wrong with the one given."""
    assert expected in _refused(capsys, cli.main, command, value)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["runs", "--status", "lost"], "invalid choice: 'lost'"),
        (["runs", "--limit", "many"], "invalid int value: 'many'"),
        (["enqueue"], "the following arguments are required: pipeline"),
        (["enqueue", "p", "--priority", "high"], "invalid int value: 'high'"),
        (["outcomes", "forget"], "invalid choice: 'forget'"),
    ],
)
def test_bad_arguments_are_refused_by_name(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    """A bad option value, a missing argument or an unknown action: one line saying which."""
    assert expected in _refused(capsys, cli.main, *argv)


def test_the_worker_refuses_a_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m app.worker --concurrency many``: one line, exit 2."""
    stderr = _refused(capsys, app.worker.main, "--concurrency", "many")
    assert stderr.startswith("python -m app.worker: ")
    assert "--concurrency" in stderr and "'many'" in stderr


def test_the_worker_refuses_a_bad_setting_before_any_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad value in the environment ends the worker with the setting named, exit 2."""
    monkeypatch.setenv("POLL_INTERVAL", "abc")
    stderr = _refused(capsys, app.worker.main)
    assert "POLL_INTERVAL='abc'" in stderr


def test_a_command_does_not_load_the_web_application() -> None:
    """Every command builds the whole parser, ``orbit serve``'s arguments included: importing the
    application with it (FastAPI, Starlette) made each command 0.36 s slower to start."""
    probe = (
        "import sys; from app.cli import build_parser; build_parser();"
        " print([m for m in ('fastapi', 'starlette', 'jinja2') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
