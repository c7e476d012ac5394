"""A deadline's block (app.deadlines.Bound) on every way out of it, with a socket pair for the
connection's socket: no database."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from app.deadlines import DeadlineExceeded, Deadlines

FAR = 3600.0  # the watching thread never cuts these itself: the tests call cut_late


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def _cut_now(deadlines: Deadlines) -> int:
    return deadlines.cut_late(time.monotonic() + 2 * FAR)


def test_an_error_of_a_call_not_cut_is_raised_as_it_is(pair: tuple[socket.socket, socket.socket]) -> None:
    deadlines = Deadlines()
    with pytest.raises(ValueError, match="its own"), deadlines.bound(pair[0].fileno(), FAR):
        raise ValueError("its own")
    assert _cut_now(deadlines) == 0  # ended: nothing left to cut


def test_an_error_of_a_call_cut_is_the_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    deadlines = Deadlines()
    with (
        pytest.raises(DeadlineExceeded, match="did not answer within 3600s") as raised,
        deadlines.bound(pair[0].fileno(), FAR),
    ):
        assert _cut_now(deadlines) == 1
        raise ConnectionError("the socket was shut down")
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert pair[1].recv(1) == b""  # the other end sees the connection closed


def test_a_call_cut_as_it_answered_keeps_its_result(pair: tuple[socket.socket, socket.socket]) -> None:
    deadlines = Deadlines()
    with deadlines.bound(pair[0].fileno(), FAR):
        assert _cut_now(deadlines) == 1
        result = "answered"
    assert result == "answered"


def test_an_interrupt_passes_through_and_ends_the_call(pair: tuple[socket.socket, socket.socket]) -> None:
    """Not left behind: the thread would later shut down a socket number reused by the next
    connection."""
    deadlines = Deadlines()
    with pytest.raises(KeyboardInterrupt), deadlines.bound(pair[0].fileno(), FAR):
        raise KeyboardInterrupt
    assert _cut_now(deadlines) == 0
    with pytest.raises(KeyboardInterrupt), deadlines.bound(pair[0].fileno(), FAR):
        _cut_now(deadlines)
        raise KeyboardInterrupt
    assert _cut_now(deadlines) == 0
