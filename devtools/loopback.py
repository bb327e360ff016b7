"""What the servers that tests and benchmarks start on loopback share: a free port, a wait for
the first answer, and `with`.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
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
