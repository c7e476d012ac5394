"""A TCP proxy that can be frozen, for tests of what a client does when the network stops answering.

``FreezableProxy(upstream)`` listens on 127.0.0.1 (a free port) and forwards every connection to
``upstream``, a ``(host, port)`` pair or the path of a Unix socket. ``freeze()`` stops forwarding in
both directions at once: connections stay open and nothing is closed; bytes sent either way are read
and held (so the sender's writes succeed, as when its kernel still gets ACKs), and new connections
wait in the listen backlog. To a client this is a network partition. ``thaw()`` delivers what was
held, in order, and forwarding resumes, including a close that happened while frozen.

One thread runs a selector loop; ``freeze()`` and ``thaw()`` take effect before they return.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from pathlib import Path

from sqlalchemy.engine import make_url

Upstream = tuple[str, int] | str

_CHUNK = 65536
_HOLD_LIMIT = 16 * 1024 * 1024  # per direction; past it the proxy stops reading and TCP pushes back


class _Pipe:
    """One direction of a link: bytes read from ``src``, not yet written to ``dst``."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.held = bytearray()
        self.eof = False  # src sent everything it will send (or failed)
        self.shut = False  # dst was told so

    @property
    def pending(self) -> bool:
        """Something to pass on: bytes, or the end of them."""
        return bool(self.held) or (self.eof and not self.shut)


class _Link:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.up = _Pipe(client, server)
        self.down = _Pipe(server, client)
        self.broken = False  # writing to a socket failed: the link is closed

    @property
    def pipes(self) -> tuple[_Pipe, _Pipe]:
        return (self.up, self.down)

    @property
    def done(self) -> bool:
        return self.broken or all(p.eof and p.shut for p in self.pipes)


class FreezableProxy:
    """See the module's docstring. Use as a context manager, or call ``close()``."""

    def __init__(self, upstream: Upstream, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self._listener = socket.create_server((host, 0), backlog=128)
        self._listener.setblocking(False)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._frozen = False
        self._closed = False
        self._links: list[_Link] = []
        self._masks: dict[socket.socket, int] = {self._wake_r: selectors.EVENT_READ}
        self._thread = threading.Thread(target=self._loop, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    # --- control -----------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Stop forwarding, both ways, for every connection; returns once no byte more passes."""
        with self._lock:
            self._frozen = True
        self._wake()

    def thaw(self) -> None:
        """Deliver what was held and forward again."""
        with self._lock:
            self._frozen = False
        self._wake()

    def held(self) -> tuple[int, int]:
        """Bytes held now: (client to server, server to client), over every connection."""
        with self._lock:
            return (sum(len(k.up.held) for k in self._links), sum(len(k.down.held) for k in self._links))

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._links)

    def close(self) -> None:
        """Close the listener and every connection (clients see their connection reset or closed)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        self._thread.join(timeout=10)

    def __enter__(self) -> FreezableProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the loop ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    if not self._frozen:
                        for link in [k for k in self._links if k.up.pending or k.down.pending]:
                            self._forward(link)
                    self._update_interest()
                for key, events in self._selector.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            sock.recv(4096)
                        continue
                    with self._lock:
                        if self._closed:
                            return
                        if sock is self._listener:
                            self._accept()
                        else:
                            self._service(sock, events)
        finally:
            self._shutdown()

    def _update_interest(self) -> None:
        wanted: dict[socket.socket, int] = {self._wake_r: selectors.EVENT_READ}
        if not self._frozen:
            wanted[self._listener] = selectors.EVENT_READ
        for link in self._links:
            for pipe in link.pipes:
                if not pipe.eof and len(pipe.held) < _HOLD_LIMIT:
                    wanted[pipe.src] = wanted.get(pipe.src, 0) | selectors.EVENT_READ
                if not self._frozen and pipe.pending:
                    wanted[pipe.dst] = wanted.get(pipe.dst, 0) | selectors.EVENT_WRITE
        for sock in list(self._masks):
            if sock not in wanted:
                self._selector.unregister(sock)
                del self._masks[sock]
        for sock, mask in wanted.items():
            if sock not in self._masks:
                self._selector.register(sock, mask)
            elif self._masks[sock] != mask:
                self._selector.modify(sock, mask)
            self._masks[sock] = mask

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            server = self._connect_upstream()
        except OSError:
            client.close()  # as the server itself would refuse it
            return
        client.setblocking(False)
        server.setblocking(False)
        self._links.append(_Link(client, server))

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(self.upstream)
            return sock
        sock = socket.create_connection(self.upstream, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _service(self, sock: socket.socket, events: int) -> None:
        for link in self._links:
            if sock is link.client or sock is link.server:
                break
        else:
            return
        for pipe in link.pipes:
            if events & selectors.EVENT_READ and pipe.src is sock and not pipe.eof:
                try:
                    data = sock.recv(_CHUNK)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""  # a reset: the end of what this side sends
                if data is not None:
                    pipe.held += data
                    pipe.eof = not data
        if not self._frozen:
            self._forward(link)

    def _forward(self, link: _Link) -> None:
        for pipe in link.pipes:
            if pipe.held:
                try:
                    sent = pipe.dst.send(pipe.held)
                    del pipe.held[:sent]
                except BlockingIOError:
                    pass
                except OSError:
                    link.broken = True
            if pipe.eof and not pipe.held and not pipe.shut:
                with contextlib.suppress(OSError):
                    pipe.dst.shutdown(socket.SHUT_WR)
                pipe.shut = True
            if link.broken:
                break
        if link.done:
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        self._links.remove(link)
        for sock in (link.client, link.server):
            if sock in self._masks:
                self._selector.unregister(sock)
                del self._masks[sock]
            sock.close()

    def _shutdown(self) -> None:
        with self._lock:
            for link in list(self._links):
                self._drop(link)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()


def upstream_of(url: str) -> Upstream:
    """Where a PostgreSQL URL connects: (host, port), or the Unix socket's path when the host is a
    directory (as in the embedded server's ``?host=/path/to/socket/dir``)."""
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or "localhost"
    if isinstance(host, tuple):
        host = host[0]
    port = parsed.port or 5432
    if host.startswith("/"):
        return str(Path(host) / f".s.PGSQL.{port}")
    return (host, port)


def proxy_for(url: str) -> FreezableProxy:
    """A proxy in front of the server of ``url``."""
    return FreezableProxy(upstream_of(url))


def url_through(proxy: FreezableProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's; the rest (user, database, query
    options such as ``pgbouncer=true``) is kept, except a ``host`` given as a query option."""
    through = make_url(url).set(host=proxy.host, port=proxy.port).difference_update_query(["host"])
    return through.render_as_string(hide_password=False)
