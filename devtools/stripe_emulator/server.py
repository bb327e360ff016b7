"""The HTTP server under the emulator: keep-alive, one write per answer, tracked connections."""

from __future__ import annotations

import http
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from devtools.loopback import LoopbackHTTPServer
from devtools.stripe_emulator.state import _Response, _to_json


class Answering(Protocol):
    """What the server needs of the emulator (api.StripeEmulator): an answer, and a count."""

    def _handle(
        self, method: str, target: str, headers: Message, body: bytes
    ) -> _Response | None: ...

    def _count_connection(self) -> None: ...


_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: load tests reuse connections
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._write((400, _to_json({"error": {"message": "Bad Content-Length"}}), []))
            return
        body = self.rfile.read(length) if length else b""
        response = self.server.emulator._handle(method, self.path, self.headers, body)
        if response is None:
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: _Response) -> None:
        status, body, headers = response
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
        if not any(name == "Content-Type" for name, _ in headers):
            lines.append("Content-Type: application/json")  # everything but the browser pages
        lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        # One write for head and body: two small writes per answer stall keep-alive clients.
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request would cost more than answering it


class _Server(LoopbackHTTPServer):
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Answering) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.emulator._count_connection()
        super().process_request(request, client_address)
