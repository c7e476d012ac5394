"""What the worker and its executors say to each other: pickled messages on a stream socket, each
behind its length, so that one read takes every message waiting.

A ``multiprocessing`` Connection costs two system calls to read each message and one to write it,
and the reader is woken once per message. Here a busy reader takes all that is waiting in one
``recv``: an executor sends each run's outcome the moment the run ends (nothing is ever held back
in an executor that could be killed with it), and the worker reads them by the dozen. Messages are
tuples of plain values; both ends are Orbit's own processes on one private socket pair.
"""

from __future__ import annotations

import pickle
import socket
import struct
from collections.abc import Iterator
from typing import Any

_LENGTH = struct.Struct("!I")
_READ = 1 << 16


def encode(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def send(sock: socket.socket, message: Any) -> None:
    """Send one message (blocks while the reader's buffer is full)."""
    sock.sendall(encode(message))


class Reader:
    """The messages of one socket, read as many at a time as are waiting."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._ended = False  # end of file was read after messages still to return

    def feed(self, data: bytes) -> list[Any]:
        """The messages complete once ``data`` (read elsewhere) is added."""
        self._buffer += data
        return list(self._messages())

    def read(self) -> list[Any]:
        """The messages complete after one ``recv`` (which blocks on a blocking socket until
        something arrives); EOFError at end of file."""
        if self._ended:
            raise EOFError
        try:
            data = self.sock.recv(_READ)
        except BlockingIOError:  # woken for nothing (a non-blocking socket)
            return []
        if not data:
            raise EOFError
        return self.feed(data)

    def read_ready(self) -> list[Any]:
        """What is waiting, without blocking: every complete message, maybe none; EOFError at
        end of file (once the messages before it were returned)."""
        if self._ended:
            raise EOFError
        messages: list[Any] = []
        while True:
            try:
                data = self.sock.recv(_READ, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return messages
            if not data:
                if messages:
                    self._ended = True
                    return messages
                raise EOFError
            messages.extend(self.feed(data))
            if len(data) < _READ:
                return messages

    def _messages(self) -> Iterator[Any]:
        buffer, start = self._buffer, 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + length
            if len(buffer) < end:
                break
            yield pickle.loads(buffer[start + _LENGTH.size : end])
            start = end
        del buffer[:start]
