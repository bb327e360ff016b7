"""What the servers tests and benchmarks start on loopback share: a free port, a wait for the
first answer, `with`, an HTTP server in a thread that can cut its connections, a wait for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

# Loopback is never reached through a proxy, whatever the environment says.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_answer(
    url: str, process: subprocess.Popen[Any], seconds: float, poll: float = 0.05
) -> str | None:
    """None once `url` answers at all (an error status counts: it is serving); else why not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}"
        try:
            _direct.open(url, timeout=2).close()
            return None
        except urllib.error.HTTPError:
            return None
        except OSError:
            time.sleep(poll)
    return f"did not answer within {seconds} s"


class Running:
    """`with X(...) as x:` starts x (if its __init__ did not) and closes it however the block ends;
    a subclass defines stop(), and start() and close() where it has more to do."""

    def start(self) -> object:
        return self

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its open connections, to cut them when it stops."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def serve_in_thread(self, name: str) -> threading.Thread:
        thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        thread.start()
        return thread

    def stop(self, thread: threading.Thread | None) -> None:
        """Stop serving, cut the connections clients keep alive, and wait for `thread`."""
        self.shutdown()
        self.server_close()
        # Idle keep-alive connections would otherwise keep being answered after stop().
        self.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client went away mid-answer (a timeout, stop()): expected, not a bug
        super().handle_error(request, client_address)


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM: `python -m devtools.X` servers, whose caller then stops."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
