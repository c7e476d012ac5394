"""Run a worker: claims runs, executes them in its executor pool, and records their outcomes.

``python -m app.worker`` or ``orbit worker``: settings from the environment (app.settings), a few
overridable on the command line.
"""

from __future__ import annotations

import argparse
import sys

import structlog

from app import arguments, logs
from app.database import DatabaseError, connect
from app.executor import ExecutorError
from app.http_server import HttpServerError
from app.masking import one_line
from app.registration import WorkerIdInUse
from app.registry import RegistryError, discover
from app.settings import Settings, load_settings_or_exit
from app.worker.loop import Worker
from app.worker.options import Options

log = structlog.get_logger("orbit.worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, help="runs at once (WORKER_CONCURRENCY)")
    parser.add_argument("--worker-id", help="this worker's id (WORKER_ID, default host:pid)")
    parser.add_argument("--pipelines", metavar="GLOB", help="only these pipelines (PIPELINE_FILTER)")
    parser.add_argument(
        "--burst", action="store_true", help="exit 0 once nothing is runnable (for cron and tests)"
    )


def start(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name, value in (
            ("WORKER_CONCURRENCY", args.concurrency),
            ("WORKER_ID", args.worker_id),
            ("PIPELINE_FILTER", args.pipelines),
        )
        if value is not None
    }
    settings = load_settings_or_exit(**overrides)
    logs.configure(
        settings.LOG_LEVEL,
        settings.LOG_FORMAT,
        settings.LOGS_DIR,
        settings.LOG_MAX_BYTES,
        settings.LOG_BACKUPS,
        settings.log_file_stem,
    )
    try:
        return build(settings, burst=args.burst).run()
    except (RegistryError, HttpServerError, WorkerIdInUse) as exc:
        return _refuse(exc, status=2)
    except (DatabaseError, ExecutorError) as exc:
        return _refuse(exc, status=1)
    except Exception as exc:
        # Whatever the loop does not handle ends the worker, for its supervisor to start it again
        # (its runs are rescued once its heartbeat stops): retrying the same turn would only fail
        # again, holding its runs.
        log.critical("Worker stopped by an unexpected error", exc_info=True)
        print(
            f"orbit: worker stopped by an unexpected error: {type(exc).__name__}: {one_line(exc)}",
            file=sys.stderr,
        )
        return 1


def _refuse(exc: Exception, *, status: int) -> int:
    log.error(str(exc))
    print(f"orbit: {exc}", file=sys.stderr)
    return status


def build(settings: Settings, *, burst: bool = False) -> Worker:
    """A ready worker: pipelines loaded, database resolved and its schema checked."""
    loaded = discover(settings.pipeline_modules)
    pipelines = {name: p for name, p in loaded.items() if settings.matches_filter(name)}
    for name in sorted(pipelines):
        log.info(f"Loaded pipeline: {name}")
    if not pipelines:
        raise RegistryError(
            f"no pipeline matches PIPELINE_FILTER={settings.PIPELINE_FILTER!r}: nothing to run"
        )
    database = connect(settings)
    options = Options(settings.WORKER_CONCURRENCY, settings.WORKER_ID, settings.PIPELINE_FILTER, burst)
    return Worker(settings, database, pipelines, options)


def main(argv: list[str] | None = None) -> int:
    parser = arguments.Parser(prog="python -m app.worker", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return start(parser.parse_args(argv))
