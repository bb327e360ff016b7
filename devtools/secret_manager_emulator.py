"""A local fake of Secret Manager's REST API: the reads and writes the service and
register-webhook make, and the failures the real one has. How to run it, and its control
endpoints: docs/emulator.md "The other stand-ins"."""

from __future__ import annotations

import argparse
import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from devtools.loopback import LoopbackHTTPServer, Running, wait_for_stop

FAILURE_MODES = ("unavailable", "permission_denied", "crc_mismatch")

# The REST transport keeps the project as written (id or number) and appends
# `?$alt=json;enum-encoding=int`; the query string is ignored.
_ADD_VERSION_PATH = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+):addVersion$")
_SECRET_PATH = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)$")
_ACCESS_PATH = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/]+)/versions/([^/:]+):access$")
_SECRET_NAME = re.compile(r"^projects/([^/]+)/secrets/([^/]+)$")
_MAX_BODY = 1 << 20
# A hold nobody released ends after this, so a failed test cannot leave a handler waiting forever.
_HOLD_LIMIT_S = 60.0


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C in pure Python: stdlib only, and independent of the google-crc32c under test."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass
class _Version:
    data: bytes
    enabled: bool = True


class Hold:
    """Accesses that arrive while held wait (already counted) until `release()`.

    Tests synchronise on `arrived` instead of guessing with a latency how long a read is in flight.
    """

    def __init__(self) -> None:
        self.arrived = threading.Event()  # set when the first held access is waiting
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def wait(self) -> None:
        self.arrived.set()
        self._released.wait(_HOLD_LIMIT_S)


class SecretManagerEmulator(Running):
    """Secret Manager on loopback, in-process; thread-safe; start()/stop() or use as a context."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_ms: int = 0) -> None:
        self._address = (host, port)
        self._latency_s = latency_ms / 1000
        self._lock = threading.Lock()
        self._secrets: dict[tuple[str, str], list[_Version]] = {}
        self._failure: str | None = None
        self._access_count = 0
        self._hold: Hold | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> SecretManagerEmulator:
        server = _Server(self._address, _Handler)
        server.emulator = self
        self._server = server
        self._thread = server.serve_in_thread("secret-manager-emulator")
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self.release()
            server.stop(self._thread)

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- state -----------------------------------------------------------------------------

    def add_version(self, project: str, secret: str, value: str | bytes) -> int:
        """Store a new enabled version (creating the secret if needed); return its number."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        with self._lock:
            versions = self._secrets.setdefault((project, secret), [])
            versions.append(_Version(data))
            return len(versions)

    def disable_version(self, project: str, secret: str, version: int) -> None:
        """Disable a version, so that `latest` skips it and reading it directly fails."""
        with self._lock:
            self._secrets[(project, secret)][version - 1].enabled = False

    def set_failure(self, mode: str | None) -> None:
        """Make every access fail (or corrupt its checksum) until set back to None."""
        if mode is not None and mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; expected one of {FAILURE_MODES}")
        with self._lock:
            self._failure = mode

    @property
    def access_count(self) -> int:
        with self._lock:
            return self._access_count

    @property
    def open_connections(self) -> int:
        """Client connections open now (a client that keeps one alive counts until it closes it)."""
        server = self._server
        return 0 if server is None else server.open_connections()

    def hold(self) -> Hold:
        """Hold every access from now on until the returned hold is released (or `release()`)."""
        with self._lock:
            self._hold = Hold()
            return self._hold

    def release(self) -> None:
        """Answer the held accesses, and stop holding new ones."""
        with self._lock:
            hold, self._hold = self._hold, None
        if hold is not None:
            hold.release()

    def reset(self) -> None:
        """Forget every secret, heal any failure, release any hold and zero the access count."""
        self.release()
        with self._lock:
            self._secrets.clear()
            self._failure = None
            self._access_count = 0

    # -- the API ---------------------------------------------------------------------------

    def access(self, project: str, secret: str, version: str) -> tuple[int, dict[str, Any]]:
        """Answer one `:access` call as (HTTP status, JSON body)."""
        with self._lock:
            self._access_count += 1
            hold = self._hold
        if hold is not None:
            hold.wait()  # then answer from the state as it is when released
        with self._lock:
            failure = self._failure
            versions = list(self._secrets.get((project, secret), ()))
        if self._latency_s:
            time.sleep(self._latency_s)

        requested = f"projects/{project}/secrets/{secret}/versions/{version}"
        if failure in ("unavailable", "permission_denied"):
            return _failure_error(failure, "secretmanager.versions.access", requested)
        if not versions:
            return _google_error(
                404,
                "NOT_FOUND",
                f"Secret [projects/{project}/secrets/{secret}] not found or has no versions.",
            )

        number = _resolve(versions, version)
        if number is None:
            return _google_error(404, "NOT_FOUND", f"Secret Version [{requested}] not found.")
        chosen = versions[number - 1]
        name = f"projects/{project}/secrets/{secret}/versions/{number}"
        if not chosen.enabled:
            return _google_error(
                400, "FAILED_PRECONDITION", f"Secret Version [{name}] is in DISABLED state."
            )
        checksum = crc32c(chosen.data)
        if failure == "crc_mismatch":
            checksum ^= 0xFFFFFFFF
        payload = {
            "data": base64.b64encode(chosen.data).decode("ascii"),
            # int64 fields travel as decimal strings in proto3 JSON.
            "dataCrc32c": str(checksum),
        }
        return 200, {"name": name, "payload": payload}

    def add_version_call(self, project: str, secret: str, body: Any) -> tuple[int, dict[str, Any]]:
        """Answer one `:addVersion` call (the secret must exist: create it with add_version)."""
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), str):
            return _google_error(400, "INVALID_ARGUMENT", "payload.data is required.")
        data = base64.b64decode(payload["data"])
        if "dataCrc32c" in payload and int(payload["dataCrc32c"]) != crc32c(data):
            return _google_error(400, "INVALID_ARGUMENT", "Checksum mismatch.")
        with self._lock:
            if self._failure in ("unavailable", "permission_denied"):
                return _google_error(503, "UNAVAILABLE", "The service is currently unavailable.")
            versions = self._secrets.get((project, secret))
            if versions is None:
                return _google_error(
                    404, "NOT_FOUND", f"Secret [projects/{project}/secrets/{secret}] not found."
                )
            versions.append(_Version(data))
            number = len(versions)
        name = f"projects/{project}/secrets/{secret}/versions/{number}"
        return 200, {"name": name, "state": "ENABLED"}

    def get_secret(self, project: str, secret: str) -> tuple[int, dict[str, Any]]:
        """Answer one `GET .../secrets/S` (the secret itself, not a version's data)."""
        name = f"projects/{project}/secrets/{secret}"
        with self._lock:
            failure = self._failure
            exists = (project, secret) in self._secrets
        if failure in ("unavailable", "permission_denied"):
            return _failure_error(failure, "secretmanager.secrets.get", name)
        if not exists:
            return _google_error(404, "NOT_FOUND", f"Secret [{name}] not found.")
        return 200, {"name": name, "replication": {"automatic": {}}}

    def versions(self, project: str, secret: str) -> list[bytes]:
        """Every version's data, oldest first (for tests)."""
        with self._lock:
            return [v.data for v in self._secrets.get((project, secret), ())]

    def control(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        """Answer one `/_emulator/...` call as (HTTP status, JSON body)."""
        if (method, path) == ("GET", "/_emulator/calls"):
            return 200, {"access_count": self.access_count}
        if (method, path) == ("POST", "/_emulator/reset"):
            self.reset()
            return 200, {"reset": True}
        if (method, path) == ("POST", "/_emulator/failure"):
            mode = body.get("mode") if isinstance(body, dict) else "missing"
            try:
                self.set_failure(mode)
            except ValueError as error:
                return 400, {"error": str(error)}
            return 200, {"mode": mode}
        if (method, path) == ("POST", "/_emulator/secrets"):
            fields = body if isinstance(body, dict) else {}
            project, secret, value = (fields.get(k) for k in ("project", "secret", "value"))
            if not (
                isinstance(project, str)
                and project
                and isinstance(secret, str)
                and secret
                and isinstance(value, str | None)
            ):
                return 400, {"error": 'expected {"project": str, "secret": str, "value": str}'}
            if value is None:  # the secret alone, no version (`gcloud secrets create S`)
                with self._lock:
                    self._secrets.setdefault((project, secret), [])
                return 200, {"name": f"projects/{project}/secrets/{secret}"}
            version = self.add_version(project, secret, value)
            name = f"projects/{project}/secrets/{secret}/versions/{version}"
            return 200, {"name": name, "version": version}
        return 404, {"error": f"no emulator control endpoint {method} {path}"}


def _resolve(versions: list[_Version], version: str) -> int | None:
    if version == "latest":
        enabled = [n for n, v in enumerate(versions, start=1) if v.enabled]
        return enabled[-1] if enabled else None
    if version.isdigit() and 1 <= int(version) <= len(versions):
        return int(version)
    return None


def _failure_error(failure: str, permission: str, resource: str) -> tuple[int, dict[str, Any]]:
    """What a call answers while set_failure() makes it fail: unavailable or permission denied."""
    if failure == "unavailable":
        return _google_error(503, "UNAVAILABLE", "The service is currently unavailable.")
    return _google_error(
        403,
        "PERMISSION_DENIED",
        f"Permission '{permission}' denied for resource '{resource}' (or it may not exist).",
    )


def _google_error(code: int, status: str, message: str) -> tuple[int, dict[str, Any]]:
    # The shape google.api_core.exceptions.from_http_response reads.
    return code, {"error": {"code": code, "message": message, "status": status}}


class _Server(LoopbackHTTPServer):
    emulator: SecretManagerEmulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        body = self._read_json()
        if path.startswith("/_emulator/"):
            if body is _INVALID:
                self._send(400, {"error": "the body is not JSON"})
            else:
                self._send(*self.server.emulator.control(method, path, body))
            return
        added = _ADD_VERSION_PATH.match(path)
        if method == "POST" and added:
            project, secret = added.groups()
            self._send(*self.server.emulator.add_version_call(project, secret, body))
            return
        secret = _SECRET_PATH.match(path)
        if method == "GET" and secret:
            self._send(*self.server.emulator.get_secret(*secret.groups()))
            return
        match = _ACCESS_PATH.match(path)
        if method == "GET" and match:
            self._send(*self.server.emulator.access(*match.groups()))
            return
        self._send(*_google_error(404, "NOT_FOUND", f"Method not found: {method} {path}"))

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            return _INVALID
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return _INVALID

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Quiet: tests and `make run` print what matters themselves.


_INVALID = object()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--latency-ms", type=int, default=0, help="delay added to every access")
    parser.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="projects/P/secrets/S=VALUE",
        help="store VALUE as a new version of the secret (repeatable)",
    )
    args = parser.parse_args(argv)

    emulator = SecretManagerEmulator(args.host, args.port, latency_ms=args.latency_ms)
    for spec in args.secret:
        name, sep, value = spec.partition("=")
        match = _SECRET_NAME.match(name)
        if not sep or not match:
            # Never echo the argument: it may be the secret itself.
            parser.error("--secret expects projects/P/secrets/S=VALUE")
        project, secret = match.groups()
        emulator.add_version(project, secret, value)
    emulator.start()
    print(f"Secret Manager emulator listening on {emulator.endpoint}", flush=True)
    try:
        wait_for_stop()
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
