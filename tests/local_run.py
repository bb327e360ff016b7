"""Helpers shared by the tests that run what the docs say: Markdown's shell blocks, `make run`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.gcloud_cli import require_tools
from tests.support import ROOT, SERVICE_VARS, free_port, stop_process

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?:bash|sh|shell)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def shell_blocks_of(text: str) -> list[str]:
    """The fenced bash/sh/shell blocks of a Markdown text, in order, dedented."""
    return [textwrap.dedent(m["indent"] + m["body"]) for m in _FENCE.finditer(text)]


def code_lines(block: str) -> list[str]:
    """The block's logical lines: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", block)
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def running_make_run(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """`make run` on free ports (its own process group); yields (function, emulator, log)."""
    require_tools("make", "curl", "sed")
    port, emulator_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env.update(PORT=str(port), STRIPE_EMULATOR_PORT=str(emulator_port), PYTHONUNBUFFERED="1")
    log = tmp_path / "make-run.log"
    # The Makefile's own recipe, with this interpreter instead of rebuilding .venv.
    process = subprocess.Popen(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "run", f"PY={sys.executable}"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api, emulator = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{emulator_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"make run did not start: {log.read_text()}"
            try:
                urllib.request.urlopen(f"{api}/ready", timeout=1)
            except urllib.error.HTTPError:
                break  # our JSON 404: serving
            except OSError:
                time.sleep(0.1)
        yield api, emulator, log
    finally:
        stop_process(process, 15)  # its group: make, the launcher, the function, the emulator
