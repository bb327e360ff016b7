"""What the servers that tests and benchmarks start on loopback share: a free port, and `with`."""

from __future__ import annotations

import socket
from typing import Self


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    """`with X(...) as x:` starts x (if its __init__ did not) and closes it however the block ends.

    A subclass defines stop(), and start() if it does not start in __init__; close() is stop()
    unless it also has more to clean up.
    """

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
