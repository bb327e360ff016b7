"""A TCP proxy that delays every answer: a slow (not down) service, for tests and the bench.

Each chunk upstream sends is held `delay` seconds; requests pass at once (docs/emulator.md)."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

from devtools.loopback import Running


class DelayProxy(Running):
    """Listens on 127.0.0.1 (a free port) and forwards to `upstream` ("host:port")."""

    def __init__(self, upstream: str, delay: float) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            held: queue.Queue[tuple[float, bytes]] = queue.Queue()
            threading.Thread(target=self._hold, args=(server, held), daemon=True).start()
            threading.Thread(target=self._release, args=(held, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                target.sendall(chunk)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def _hold(self, source: socket.socket, held: queue.Queue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                held.put((time.monotonic() + self.delay, chunk))
        held.put((time.monotonic() + self.delay, b""))

    def _release(self, held: queue.Queue[tuple[float, bytes]], target: socket.socket) -> None:
        while True:
            due, chunk = held.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not chunk:
                    target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(chunk)
            except OSError:
                return
