"""Google's Firestore emulator (`gcloud emulators firestore start`) on loopback, for tests.

It comes with the Google Cloud CLI and needs Java. Data lives in memory: a restart empties it, and
each project id is a separate set of data. Clients find it through FIRESTORE_EMULATOR_HOST.

    python -m devtools.firestore_emulator --port 8086   # runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import subprocess
import urllib.request
from pathlib import Path

from devtools.gcloud_emulator import GcloudEmulator


class FirestoreEmulator(GcloudEmulator):
    """One emulator process group; start, stop and restart it on the same port."""

    name = "Firestore"
    command = ("emulators", "firestore", "start")
    host_variable = "FIRESTORE_EMULATOR_HOST"

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        super().__init__(port)
        self._log_path = log_path

    def start(self, seconds: float = 90.0) -> None:
        if self.running:
            return
        output = self._log_path.open("ab") if self._log_path else subprocess.DEVNULL
        try:
            self._launch(output)
        finally:
            if self._log_path:
                output.close()
        self._wait_ready(self._answers_ok, seconds, self._log_path)
        self._warm_up()

    def _answers_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as response:
                return response.read().strip() == b"Ok"
        except OSError:
            return False

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8086)
    args = parser.parse_args()
    FirestoreEmulator.serve(args.port)


if __name__ == "__main__":
    main()
