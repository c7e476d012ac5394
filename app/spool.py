"""Outcomes a stopping worker could not write: kept on disk, applied once the database answers.

A worker that is stopped while the database is away keeps trying to write the outcomes it holds
for ``SHUTDOWN_WRITE_TIMEOUT``. What is still unwritten then is saved, one JSON object a line, to
``DATA_DIR/unwritten-outcomes-<worker id>.jsonl`` (replaced atomically, so a crash mid-write
leaves the previous file whole), and the worker exits 1. The next worker started with the same
``DATA_DIR`` applies every such file before it registers; ``orbit outcomes apply [FILE]`` does
the same by hand. Each outcome is written exactly as the worker would have written it, fenced on
its run id, attempt, ``running`` and the worker id that ran it: an outcome whose run was recovered,
cancelled or finished meanwhile is refused and reported, never written over what is there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from app import queries
from app.queries import Success, Transition
from app.states import RunStatus

PATTERN = "unwritten-outcomes-*.jsonl"
_TRANSITION_STATUSES = {RunStatus.PENDING, RunStatus.FAILED, RunStatus.TIMED_OUT}


class SpoolError(Exception):
    """A file of unwritten outcomes cannot be read; the message is one line for the user."""


@dataclass(frozen=True)
class Unwritten:
    """One outcome not yet in the database: ``outcome`` is a Success or a Transition."""

    worker_id: str
    pipeline: str
    outcome: Success | Transition

    @property
    def status(self) -> str:
        return str(RunStatus.SUCCEEDED if isinstance(self.outcome, Success) else self.outcome.status)

    def line(self) -> str:
        o = self.outcome
        fields: dict[str, Any] = {"worker_id": self.worker_id, "pipeline": self.pipeline, "run_id": o.id}
        fields.update(attempt=o.attempt, outcome=self.status)
        if isinstance(o, Success):
            fields["result_json"] = o.result_json
        else:
            fields.update(delay=o.delay, refund=o.refund, error=o.error, entry=o.entry)
        return json.dumps(fields, ensure_ascii=False)


@dataclass(frozen=True)
class Applied:
    """What became of one unwritten outcome: ``written``, ``already`` (a turn whose reply was
    lost had written it) or ``refused`` (``now`` is the run's status and attempt, or None)."""

    item: Unwritten
    result: str
    now: str | None = None


def path_for(directory: Path, worker_id: str) -> Path:
    # A worker id may hold any character; the file name keeps the safe ones.
    return directory / f"unwritten-outcomes-{re.sub(r'[^A-Za-z0-9._-]', '_', worker_id)}.jsonl"


def save(path: Path, items: Sequence[Unwritten]) -> None:
    """Add ``items`` to the file at ``path`` (created if need be), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = "".join(item.line() + "\n" for item in items)
    try:
        # Under the lock an applier holds while it applies and removes the file: its outcomes
        # are kept, or were applied, never both lost.
        with claimed(path) as kept:
            _replace(path, (kept or "") + new)
    except FileNotFoundError:
        _replace(path, new)


def _replace(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def load(path: Path, text: str) -> list[Unwritten]:
    """The outcomes in ``text`` (read from ``path``); SpoolError naming the first bad line."""
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(_parse(json.loads(line)))
        except (ValueError, TypeError, KeyError) as exc:
            reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise SpoolError(f"{path} line {number}: not an unwritten outcome ({reason})") from None
    return items


def _parse(fields: Any) -> Unwritten:
    if not isinstance(fields, dict):
        raise ValueError("a JSON object expected")
    worker_id, pipeline, run_id, attempt = (
        fields["worker_id"],
        fields["pipeline"],
        fields["run_id"],
        fields["attempt"],
    )
    if not (isinstance(worker_id, str) and isinstance(pipeline, str) and worker_id):
        raise ValueError("worker_id and pipeline must be text")
    if not (_whole(run_id) and _whole(attempt) and run_id >= 1 and attempt >= 1):
        raise ValueError("run_id and attempt must be positive whole numbers")
    status = fields["outcome"]
    if status == RunStatus.SUCCEEDED:
        result_json = fields["result_json"]
        json.loads(result_json)  # a ValueError (or TypeError) when it is not JSON text
        return Unwritten(worker_id, pipeline, Success(run_id, attempt, result_json))
    if status not in _TRANSITION_STATUSES:
        raise ValueError(f"outcome {status!r} is not succeeded, pending, failed or timed_out")
    delay, refund, error, entry = fields["delay"], fields["refund"], fields["error"], fields["entry"]
    if not (isinstance(delay, int | float) and not isinstance(delay, bool) and 0 <= delay < 2**31):
        raise ValueError("delay must be a number of seconds")
    if not (isinstance(refund, bool) and isinstance(error, str | None) and isinstance(entry, dict | None)):
        raise ValueError("refund must be true or false, error text or null, entry an object or null")
    transition = Transition(run_id, attempt, RunStatus(status), float(delay), refund, error, entry)
    return Unwritten(worker_id, pipeline, transition)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value < 2**31


def apply(conn: Connection, items: Sequence[Unwritten]) -> list[Applied]:
    """Write ``items`` in the caller's transaction, each fenced as its worker would have."""
    done: list[Applied] = []
    for worker_id in sorted({item.worker_id for item in items}):
        mine = [item for item in items if item.worker_id == worker_id]
        successes = [i.outcome for i in mine if isinstance(i.outcome, Success)]
        transitions = [i.outcome for i in mine if isinstance(i.outcome, Transition)]
        owned, _ = queries.exchange(conn, worker_id=worker_id, successes=successes, transitions=transitions)
        refused = [i for i in mine if i.outcome.id not in owned]
        already = _landed(conn, worker_id, refused)
        for item in mine:
            if item.outcome.id in owned:
                done.append(Applied(item, "written"))
            elif item.outcome.id in already:
                done.append(Applied(item, "already"))
            else:
                done.append(Applied(item, "refused", _now(conn, item.outcome.id)))
    return done


def _landed(conn: Connection, worker_id: str, items: list[Unwritten]) -> set[int]:
    successes = [i.outcome for i in items if isinstance(i.outcome, Success)]
    transitions = [i.outcome for i in items if isinstance(i.outcome, Transition)]
    return queries.landed(conn, worker_id, successes, transitions) if items else set()


def _now(conn: Connection, run_id: int) -> str | None:
    run = queries.get_run(conn, run_id)
    return None if run is None else f"{run.status}, attempt {run.attempt}"


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob(PATTERN))


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[str | None]:
    """The text of ``path``, locked against another process applying it at the same time; None
    when that other process applied and removed it meanwhile. ``FileNotFoundError`` when absent."""
    with open(path, encoding="utf-8") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        # Applied and removed, or replaced by a newer save, while this process waited for the lock.
        if not _same_file(path, os.fstat(file.fileno())):
            yield None
            return
        yield file.read()


def _same_file(path: Path, opened: os.stat_result) -> bool:
    try:
        current = path.stat()
    except FileNotFoundError:
        return False
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


def apply_file(engine: Engine, path: Path) -> list[Applied] | None:
    """Apply the outcomes of ``path`` in one transaction, then remove the file; None when another
    process did it first. SpoolError on a bad line (nothing written, the file kept)."""
    try:
        with claimed(path) as text:
            if text is None:
                return None
            items = load(path, text)
            with engine.begin() as conn:
                done = apply(conn, items)
            path.unlink()  # still under the lock: no other process applies it again
            return done
    except FileNotFoundError:
        return None  # applied and removed by another process


def describe(applied: Applied) -> str:
    """One line for the user about one outcome."""
    o, item = applied.item.outcome, applied.item
    what = f"run {o.id} ({item.pipeline}) attempt {o.attempt}: {item.status}"
    if applied.result == "written":
        return f"{what}: written"
    if applied.result == "already":
        return f"{what}: already written"
    now = "the run no longer exists" if applied.now is None else f"the run is now {applied.now}"
    return f"{what}: refused, {now} (recovered, cancelled or finished meanwhile)"
