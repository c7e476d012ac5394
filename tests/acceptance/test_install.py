"""Orbit as a user gets it: `pip install` of a clone (not editable) into a virtualenv of its own,
then used from a folder of the user's, on a database of its own, with the user's pipelines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.servers import Scratch, TestServer

# What is not part of a clone, when the checkout cannot list its files through git.
NOT_CLONED = shutil.ignore_patterns(
    ".git", ".venv*", ".orbit", "logs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)

USER_PIPELINES = """
from app import Context, pipeline


@pipeline("user.shout", max_attempts=1)
def shout(ctx: Context, params: dict) -> dict:
    word = ctx.step("upper", lambda: params["word"].upper())
    return {"shouted": word}
"""


def _clone(destination: Path) -> None:
    """The checkout's files as a clone has them (tracked and new, not ignored), as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    if listed.returncode != 0:
        shutil.copytree(ROOT, destination, ignore=NOT_CLONED)
        return
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():  # a file deleted but not yet committed is listed too
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a new virtualenv where Orbit and its dependencies were installed by pip."""
    root = tmp_path_factory.mktemp("install")
    _clone(root / "orbit")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(root / "orbit")]
    result = subprocess.run(pip, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin"


@pytest.fixture
def blank(server: TestServer) -> Iterator[Scratch]:
    """A database of its own, not migrated."""
    with server.scratch_database("orbit_install") as database:
        yield database


def test_an_installed_orbit_migrates_enqueues_and_runs_a_users_pipeline(
    installed: Path, blank: Scratch, tmp_path: Path
) -> None:
    """From a folder with only the user's module: `orbit migrate`, `orbit enqueue`, and
    `python -m app.worker --burst` run the user's pipeline, all from the installed package."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_pipelines.py").write_text(USER_PIPELINES)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORBIT_", "DATABASE_URL", "DIRECT_URL", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        blank.env(),
        ORBIT_PIPELINES="my_pipelines",
        DATA_DIR=str(tmp_path / "data"),
        LOGS_DIR=str(tmp_path / "logs"),
        POLL_INTERVAL="50ms",
    )

    def run(*command: str) -> str:
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        return result.stdout

    python, orbit = str(installed / "python"), str(installed / "orbit")
    where = run(python, "-c", "import app, migrations; print(app.__file__); print(migrations.__file__)")
    assert all(Path(line).is_relative_to(installed.parent) for line in where.split()), where
    assert "latest schema" in run(orbit, "migrate")
    run_id = run(orbit, "enqueue", "user.shout", "--params", '{"word": "orbit"}').strip()
    run(python, "-m", "app.worker", "--burst")
    record = json.loads(run(orbit, "status", run_id, "--json"))
    assert (record["status"], record["result"]) == ("succeeded", {"shouted": "ORBIT"})
