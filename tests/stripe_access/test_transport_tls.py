"""The Stripe transport's TLS, as production runs it: a local https server with a certificate from
a throwaway CA made here, reached directly and through a CONNECT proxy, under the SDK's retries."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import stripe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from checkout.stripe_access.transport import StripeTransport
from tests.support import answer, read_request

SESSION = b'{"id": "cs_test_tls", "object": "checkout.session", "status": "open"}'


@dataclass(frozen=True)
class Authority:
    """A CA that exists only for one test: its certificate as a PEM file, and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def make_authority(directory: Path, name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, _name(name), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pem = directory / f"{name.replace(' ', '-')}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(cert, key, pem)


def server_context(authority: Authority, directory: Path, host_name: str) -> ssl.SSLContext:
    """A server's TLS context, with a certificate for `host_name` that `authority` signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key())
    cert = (
        _builder(host_name, authority.cert.subject, key)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ca_key_id, critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    stem = f"{authority.pem.stem}-{host_name}"
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


class TlsServer:
    """An https server on loopback that answers every request with a session; counts the TCP
    connections it accepted and the TLS handshakes that completed."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.connections = 0
        self.handshakes = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> TlsServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://localhost:{port}"  # localhost is the name our certificates carry
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await writer.start_tls(self.context)
            self.handshakes += 1
            while request := await read_request(reader):
                self.requests.append(request)
                writer.write(answer(SESSION))
                await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass  # the client refused our certificate
        finally:
            writer.close()


class ConnectProxy:
    """An HTTP proxy that opens CONNECT tunnels and relays bytes; records each CONNECT line."""

    def __init__(self) -> None:
        self.tunnels: list[bytes] = []

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0]
        self.tunnels.append(request_line)
        method, target, _ = request_line.split(b" ", 2)
        if method != b"CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, port = target.decode().rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_relay(reader, upstream_writer), _relay(upstream_reader, writer))


async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        sink.close()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, ssl.SSLContext | Path]:
    """Our CA's PEM, and servers' contexts: trusted for localhost, trusted for another name, and
    for localhost from a CA nobody trusts."""
    trusted = make_authority(tmp_path, "Throwaway Trusted CA")
    stranger = make_authority(tmp_path, "Throwaway Unknown CA")
    return {
        "ca_file": trusted.pem,
        "trusted": server_context(trusted, tmp_path, "localhost"),
        "wrong_host": server_context(trusted, tmp_path, "api.stripe.com"),
        "untrusted": server_context(stranger, tmp_path, "localhost"),
    }


def stripe_client(transport: StripeTransport, url: str) -> stripe.StripeClient:
    """The SDK as the gateway builds it: two network retries, on our transport."""
    return stripe.StripeClient(
        "sk_test_tlsOnlyNotARealKey",
        base_addresses={"api": url},
        max_network_retries=2,
        http_client=transport,
    )


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(test)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_trusted_certificate_for_the_right_host_is_accepted(pki, no_proxy_env):
    async def test() -> None:
        async with TlsServer(pki["trusted"]) as server:
            transport = StripeTransport(server.url, 5, ca_file=str(pki["ca_file"]))
            session = await stripe_client(
                transport, server.url
            ).v1.checkout.sessions.retrieve_async("cs_test_tls")
            again = await transport.request_async("get", server.url + "/v1/x", {})
            await transport.close_async()
            assert session.id == "cs_test_tls" and again[1] == 200
            assert (server.connections, server.handshakes) == (1, 1)  # kept alive, one handshake
            assert server.requests[0].startswith(b"GET /v1/checkout/sessions/cs_test_tls HTTP/1.1")

    run(test())


def test_a_trusted_certificate_is_accepted_through_a_connect_proxy(pki, no_proxy_env):
    async def test() -> None:
        async with TlsServer(pki["trusted"]) as server, ConnectProxy() as proxy:
            no_proxy_env.setenv("https_proxy", proxy.url)
            transport = StripeTransport(server.url, 5, ca_file=str(pki["ca_file"]))
            session = await stripe_client(
                transport, server.url
            ).v1.checkout.sessions.retrieve_async("cs_test_tls")
            await transport.close_async()
            assert session.id == "cs_test_tls"
            port = server.url.rsplit(":", 1)[1]
            assert proxy.tunnels == [f"CONNECT localhost:{port} HTTP/1.1".encode()]
            assert server.handshakes == 1

    run(test())


@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "through a proxy"])
@pytest.mark.parametrize(
    ("server_cert", "reason"),
    [("untrusted", "unable to get local issuer certificate"), ("wrong_host", "Hostname mismatch")],
    ids=["untrusted CA", "wrong host name"],
)
def test_a_certificate_we_cannot_verify_is_refused_and_not_retried(
    pki, no_proxy_env, server_cert, reason, through_proxy
):
    async def test() -> None:
        async with TlsServer(pki[server_cert]) as server, ConnectProxy() as proxy:
            if through_proxy:
                no_proxy_env.setenv("https_proxy", proxy.url)
            transport = StripeTransport(server.url, 5, ca_file=str(pki["ca_file"]))
            client = stripe_client(transport, server.url)
            with pytest.raises(stripe.APIConnectionError) as caught:
                await client.v1.checkout.sessions.retrieve_async("cs_test_tls")
            await transport.close_async()
            assert caught.value.should_retry is False
            assert "TLS certificate" in str(caught.value)
            assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
            assert reason in str(caught.value.__cause__)
            # One attempt: the SDK's two retries were not spent on it, and nothing was sent.
            assert (server.connections, server.handshakes, server.requests) == (1, 0, [])
            assert len(proxy.tunnels) == (1 if through_proxy else 0)

    run(test())


def test_production_trusts_the_sdks_ca_bundle_and_not_our_throwaway_ca(pki, no_proxy_env):
    # Without ca_file the transport trusts what Stripe's SDK ships, as in production.
    async def test() -> None:
        async with TlsServer(pki["trusted"]) as server:
            transport = StripeTransport(server.url, 5)
            sessions = stripe_client(transport, server.url).v1.checkout.sessions
            with pytest.raises(stripe.APIConnectionError) as caught:
                await sessions.retrieve_async("cs_test_tls")
            await transport.close_async()
            assert caught.value.should_retry is False
            assert server.connections == 1

    run(test())
