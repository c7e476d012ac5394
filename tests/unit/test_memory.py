"""What a worker's processes use (app.memory): read from /proc, summed, and shown short."""

from __future__ import annotations

import json
import os

from app.memory import Snapshot, Usage, summary, usage

MB = 2**20


def test_this_process_is_read_with_its_resident_and_proportional_sizes() -> None:
    mine = usage(os.getpid())
    assert mine is not None and mine.pid == os.getpid()
    assert mine.rss >= mine.pss > 0


def test_a_process_that_is_gone_is_left_out() -> None:
    assert usage(2**22 + 1) is None  # above pid_max: never a process
    snapshot = Snapshot.of(os.getpid(), [2**22 + 1], None)
    assert [name for name, _ in snapshot.processes()] == ["worker"]


def test_the_total_adds_the_proportional_sizes_and_the_json_names_each_process() -> None:
    snapshot = Snapshot(
        Usage(1, 80 * MB, 60 * MB), Usage(2, 40 * MB, 16 * MB), [Usage(3, 45 * MB, 12 * MB)] * 2
    )
    assert snapshot.total == 100 * MB
    document = json.loads(snapshot.as_json())
    assert set(document) == {"total_pss", "worker", "forkserver", "executor-0", "executor-1"}
    assert document["executor-1"] == {"pid": 3, "rss": 45 * MB, "pss": 12 * MB}
    assert snapshot.describe() == "100 MB (worker 60 MB, fork server 16 MB, executors 12 MB each)"
    assert summary(document) == "100 MB (executors 12 MB each)"


def test_executors_of_different_sizes_are_each_shown() -> None:
    snapshot = Snapshot(Usage(1, MB, MB), None, [Usage(2, MB, 12 * MB), Usage(3, MB, 30 * MB)])
    assert snapshot.describe() == "43 MB (worker 1 MB, executors 12 MB/30 MB)"
    assert summary(json.loads(snapshot.as_json())) == "43 MB (executors 12 MB/30 MB)"
    assert summary(None) == "-"
