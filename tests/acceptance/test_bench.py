"""The benchmark runs end to end (a smoke run: `--quick` checks it works, never a speed)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import ROOT


def test_the_quick_benchmark_prints_its_table(worker_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        env=worker_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout.splitlines()
    assert table[0].startswith("| figure")
    figures = (
        "batch enqueue",
        "single enqueue",
        "HTTP enqueue, 1 run per POST",
        "HTTP batch enqueue",
        "drain, 2 process",
        "drain, plain loop claim 100",
        "drain, 2 processes, beside",
        "pickup",
        "claim of 10, 1,000 pending, with a concurrency",
    )
    for figure in figures:
        assert any(line.startswith(f"| {figure}") for line in table), figure
    # The API's figures count only when every request was answered 201 and the server stopped
    # cleanly; the benchmark reports both instead of failing, so the smoke run checks them.
    rows = {cells[1].strip(): cells[2].strip() for cells in (line.split("|") for line in table[2:])}
    assert rows["HTTP enqueue, answers other than 201"] == "0"
    assert rows["HTTP API, orbit serve's exit status on SIGTERM"] == "0"
