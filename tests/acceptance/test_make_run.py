"""``make run``, as a newcomer types it: the demo runs are enqueued, the console's URL printed, and
the console shows the demo runs finished by the worker started beside it; Ctrl-C stops both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from sqlalchemy import Engine, text

from tests.support import http
from tests.support.paths import ROOT
from tests.support.waiting import wait_until


def _stats(port: int) -> dict[str, int] | None:
    reply = http.answers(port, "/queue/stats")
    if reply is None or reply.status != 200:
        return None
    return dict(json.loads(reply.body)["byPipeline"].get("demo.report", {}))


def test_make_run_serves_the_console_and_drains_the_demo_runs(
    engine: Engine, worker_env: dict[str, str], tmp_path: Path
) -> None:
    port = http.free_port()
    env = {**worker_env, "ORBIT_PIPELINES": "", "SERVE_PORT": str(port), "LOG_LEVEL": "warning"}
    out = tmp_path / "make-run.out"
    with out.open("wb") as sink:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            done = wait_until(lambda: (_stats(port) or {}).get("succeeded"), 90, "the demo report to succeed")
            assert done == 1
            page = http.get(port, "/")
            assert page.status == 200 and "Orbit" in page.body
            assert f"Orbit console: http://127.0.0.1:{port}/" in out.read_text()
        finally:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
            code = make.wait(timeout=60)
    assert http.answers(port, "/api/health") is None, "orbit serve outlived make run"
    assert code == -signal.SIGINT, out.read_text()[-2000:]
    with engine.connect() as conn:
        stopped = conn.execute(text("SELECT stopped_at IS NOT NULL FROM workers")).scalars().all()
    assert stopped == [True], "the worker did not stop cleanly"
