"""A TCP proxy on 127.0.0.1 that a test stops and starts again, to take a server away.

Stopping closes the listening socket (new connections are refused) and cuts
every live connection both ways, as a crashed server or a pulled cable would;
starting listens again on the same port, so clients reconnect to the same URL.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class TcpProxy:
    """Forwards connections on ``127.0.0.1:port`` to ``upstream``, until stopped."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a stop)."""
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the live ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _cut(listener)  # shutdown wakes the thread blocked in accept()
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            _cut(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _cut(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._live.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy bytes one way until either side closes; then close both."""
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._live.difference_update((source, sink))
        _cut(source)
        _cut(sink)


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected, or already cut
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
