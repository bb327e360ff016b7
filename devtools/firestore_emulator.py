"""Google's Firestore emulator (`gcloud emulators firestore start`) on loopback, for tests.

`python -m devtools.firestore_emulator --port 8086` runs one until Ctrl-C (docs/ledger.md)."""

from __future__ import annotations

import argparse
import json
import urllib.request

from devtools.gcloud_emulator import GcloudEmulator


class FirestoreEmulator(GcloudEmulator):
    """One emulator process group; start, stop and restart it on the same port."""

    name = "Firestore"
    command = ("emulators", "firestore", "start")
    host_variable = "FIRESTORE_EMULATOR_HOST"

    def _ready(self, log_offset: int) -> bool:
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
