"""What Google's Firestore and Pub/Sub emulators share: one `gcloud ... start` process group on a
loopback port, in an empty gcloud configuration; started, stopped and restarted on that port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Self

from devtools.loopback import Running, free_port, wait_for_stop


class GcloudEmulator(Running):
    """A subclass names the emulator, its gcloud command, and the variable its clients read."""

    name = ""  # for messages: "Firestore", "Pub/Sub"
    command: tuple[str, ...] = ()  # the words between `gcloud` and --host-port
    host_variable = ""  # e.g. FIRESTORE_EMULATOR_HOST: not passed on to gcloud

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        # An empty gcloud configuration: no account, no prompts, nothing written to the user's.
        self._config = tempfile.TemporaryDirectory(prefix="gcloud-config-")
        self.log_path = log_path or Path(self._config.name) / "emulator.log"

    def start(self, seconds: float = 90.0) -> None:
        if self.running:
            return
        # The log is appended to across restarts: a subclass reads this start's lines only.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as output:
            self._launch(output)
        self._wait_ready(lambda: self._ready(offset), seconds)
        self._warm_up()

    def _ready(self, log_offset: int) -> bool:
        """Whether the emulator started at `log_offset` in its log now answers."""
        raise NotImplementedError

    def _warm_up(self) -> None:
        """What a fresh emulator should do once before the first test's deadlines start."""

    @classmethod
    def missing(cls) -> str | None:
        """Why the emulator cannot run here (gcloud or Java absent), or None."""
        for tool, what in (("gcloud", "the Google Cloud CLI"), ("java", "Java (17 or later)")):
            if shutil.which(tool) is None:
                return f"the {cls.name} emulator needs {what}: `{tool}` is not on PATH"
        return None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _launch(self, output: IO[bytes]) -> None:
        env = {
            **os.environ,
            "CLOUDSDK_CONFIG": self._config.name,
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        }
        env.pop(self.host_variable, None)
        self._process = subprocess.Popen(
            ["gcloud", *self.command, f"--host-port={self.host}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gcloud starts Java as a child
        )

    def _wait_ready(self, ready: Callable[[], bool], seconds: float) -> None:
        """Until `ready()`; stopped, with an error naming the log, if it exits or never is."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"the {self.name} emulator exited early; see {self.log_path}")
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the {self.name} emulator did not start on {self.host} in {seconds} s")

    def accepts_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # gcloud can exit before its Java child: make sure the group is gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10  # then its port is free for a restart
        while time.monotonic() < deadline and self.accepts_connections():
            time.sleep(0.1)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._config.cleanup()

    @classmethod
    def serve(cls, port: int, ready: Callable[[Self], list[str]] = lambda _: []) -> None:
        """`python -m devtools.X`: print how to use it and `ready`'s lines (it may set the emulator
        up first), then run until Ctrl-C or SIGTERM."""
        reason = cls.missing()
        if reason:
            raise SystemExit(reason)
        with cls(port) as emulator:
            lines = ready(emulator)
            print(f"export {cls.host_variable}={emulator.host}", *lines, sep="\n", flush=True)
            wait_for_stop()
