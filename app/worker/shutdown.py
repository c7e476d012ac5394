"""A stop request and the deadlines it sets.

The first SIGTERM or SIGINT starts a graceful stop: no new runs, running ones are told
(``ctx.should_stop``) and have SHUTDOWN_GRACE to end, then are stopped and given back; outcomes
are then tried for SHUTDOWN_WRITE_TIMEOUT more. A second signal ends the grace at once, with one
last try at writing.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


class Shutdown:
    def __init__(self, grace: float, write_timeout: float) -> None:
        self.grace, self.write_timeout = grace, write_timeout
        self.signals = 0
        self.stop_at: float | None = None  # the end of the grace, once a stop was requested
        self.writes_until = float("inf")  # a stopping worker's last try at writing outcomes

    @property
    def requested(self) -> bool:
        return self.stop_at is not None

    def request(self, now: float) -> bool:
        """Record a stop request; True for the first (a graceful stop begins)."""
        self.signals += 1
        if self.signals == 1:
            self.stop_at = now + self.grace
            self.writes_until = self.stop_at + self.write_timeout
            return True
        self.stop_at = self.writes_until = now  # one last try at writing, then saved
        return False

    def write_deadline(self) -> float:
        """When the last try at writing outcomes ends (infinite until a stop is requested)."""
        return self.writes_until

    def grace_over(self, now: float) -> bool:
        return self.stop_at is not None and now >= self.stop_at

    def remaining(self, now: float) -> float:
        """Seconds until the grace ends (infinite when no stop was requested)."""
        return float("inf") if self.stop_at is None else max(0.0, self.stop_at - now)

    @staticmethod
    def install(wake_fd: int, handler: Callable[..., Any]) -> Callable[[], None]:
        """Route SIGTERM and SIGINT to ``handler``, and wake the loop's wait on ``wake_fd``;
        returns what restores the old ones."""
        old_fd = signal.set_wakeup_fd(wake_fd, warn_on_full_buffer=False)
        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            signal.set_wakeup_fd(old_fd)
            for sig, previous in old.items():
                signal.signal(sig, previous)

        return restore
