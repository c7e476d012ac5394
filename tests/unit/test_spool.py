"""The file of outcomes a worker stopped in an outage saves (app.spool)."""

from __future__ import annotations

from pathlib import Path

from app import spool
from app.queries import Success


def test_a_save_keeps_what_an_earlier_save_left(tmp_path: Path) -> None:
    """Saving again adds to the file instead of replacing what is there, and leaves no temporary file."""
    path = spool.path_for(tmp_path, "host:123")
    first = spool.Unwritten("host:123", "p", Success(1, 1, "null"))
    second = spool.Unwritten("host:123", "p", Success(2, 3, "[1]"))
    spool.save(path, [first])
    spool.save(path, [second])
    assert spool.load(path, path.read_text()) == [first, second]
    assert [p.name for p in tmp_path.iterdir()] == ["unwritten-outcomes-host_123.jsonl"]
