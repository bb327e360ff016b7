"""`make doctor`: `python -m checkout doctor` against a running `make run`, with its settings.

The variables `make run` gives the function (run_local.py); doctor checks that setup."""

from __future__ import annotations

import os
import subprocess
import sys

from devtools.run_local import EMULATOR_KEY, LOCAL_WEBHOOK_SECRET


def main() -> int:
    env = dict(os.environ)
    port = env.get("PORT", "8080")
    if not (env.get("STRIPE_SECRET_KEY") or env.get("STRIPE_SECRET_NAME")):
        env["STRIPE_API_BASE"] = f"http://127.0.0.1:{env.get('STRIPE_EMULATOR_PORT', '12111')}"
        env["STRIPE_SECRET_KEY"] = EMULATOR_KEY
        env.setdefault("STRIPE_WEBHOOK_SECRET", LOCAL_WEBHOOK_SECRET)
    url = f"http://127.0.0.1:{port}/api/checkout/webhook"
    command = [sys.executable, "-m", "checkout", "doctor", "--local", "--url", url]
    return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
