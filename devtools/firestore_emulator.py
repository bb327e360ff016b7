"""Google's Firestore emulator (`gcloud emulators firestore start`) on loopback, for tests.

It comes with the Google Cloud CLI and needs Java. Data lives in memory: a restart empties it, and
each project id is a separate set of data. Clients find it through FIRESTORE_EMULATOR_HOST.

    python -m devtools.firestore_emulator --port 8086   # runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from devtools.loopback import Running, free_port


class FirestoreEmulator(Running):
    """One emulator process group; start, stop and restart it on the same port."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen | None = None
        # An empty gcloud configuration: no account, no prompts, nothing written to the user's.
        self._config = tempfile.TemporaryDirectory(prefix="gcloud-config-")

    @staticmethod
    def missing() -> str | None:
        """Why the emulator cannot run here (gcloud or Java absent), or None."""
        for tool, what in (("gcloud", "the Google Cloud CLI"), ("java", "Java (17 or later)")):
            if shutil.which(tool) is None:
                return f"the Firestore emulator needs {what}: `{tool}` is not on PATH"
        return None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, seconds: float = 90.0) -> None:
        if self.running:
            return
        env = {
            **os.environ,
            "CLOUDSDK_CONFIG": self._config.name,
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        }
        env.pop("FIRESTORE_EMULATOR_HOST", None)
        output = self._log_path.open("ab") if self._log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                ["gcloud", "emulators", "firestore", "start", f"--host-port={self.host}"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: gcloud starts Java as a child
            )
        finally:
            if self._log_path:
                output.close()
        self._wait_ready(seconds)

    def _wait_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"the Firestore emulator exited early; see {self._log_path}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as response:
                    ready = response.read().strip() == b"Ok"
            except OSError:
                ready = False
            if ready:
                self._warm_up()
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the Firestore emulator did not answer on {self.host} in {seconds} s")

    def _warm_up(self) -> None:
        # A fresh emulator's first write takes seconds while Java warms up: pay that here, not
        # inside the first test's deadlines. Its own project, so no test sees the document.
        documents = f"http://{self.host}/v1/projects/warm-up/databases/(default)/documents"
        request = urllib.request.Request(
            f"{documents}/warm-up/warm-up",
            data=json.dumps({"fields": {"warm": {"booleanValue": True}}}).encode(),
            method="PATCH",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60):
            pass
        with urllib.request.urlopen(f"{documents}/warm-up/warm-up", timeout=60):
            pass

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
        self._wait_port_free()

    def _wait_port_free(self, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.host}/", timeout=0.5).close()
            except OSError:
                return
            time.sleep(0.1)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._config.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8086)
    args = parser.parse_args()
    reason = FirestoreEmulator.missing()
    if reason:
        raise SystemExit(reason)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that `with` stops the emulator
    with FirestoreEmulator(args.port) as emulator:
        print(f"export FIRESTORE_EMULATOR_HOST={emulator.host}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
