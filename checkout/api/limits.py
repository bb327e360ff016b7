"""Rationing Stripe calls: who the client is, how often it may ask, how many calls may be open.

Per instance, so that one script cannot spend the account's Stripe rate limit: docs/abuse.md."""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request

from checkout.errors import api_error


@dataclass(frozen=True)
class ClientAddresses:
    """Who sent a request, for per-client limits, behind `trusted_hops` proxies of ours."""

    trusted_hops: int

    def of(self, request: Request) -> str:
        peer = request.client.host if request.client is not None else None
        return client_address(request.headers.getlist("X-Forwarded-For"), peer, self.trusted_hops)


def client_address(forwarded_for: Sequence[str], peer: str | None, trusted_hops: int) -> str:
    """Who the client is: the socket peer, or the entry `trusted_hops` from the right of
    X-Forwarded-For (every line of it, in order); an IPv6 address stands for its /64. Why only
    the rightmost entries count: docs/abuse.md."""
    if trusted_hops <= 0:
        return _client_key(peer or "unknown")
    entries = [e.strip() for e in ",".join(forwarded_for).split(",") if e.strip()]
    if len(entries) < trusted_hops:
        # Not behind the proxies we were told of (a direct call, or a misconfigured hop count):
        # the nearest address we can trust is the socket peer.
        return _client_key(peer or "unknown")
    return _client_key(entries[-trusted_hops][:64])


def _client_key(address: str) -> str:
    """One key per IPv4 address, and per /64 for IPv6: one subscriber holds a whole /64."""
    if ":" not in address:
        return address  # IPv4, or not an address at all: kept as written
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"


class TokenBuckets:
    """One token bucket per client, in bounded memory (least recently seen clients go first):
    `per_minute` calls in a burst, then one every 60/`per_minute` seconds."""

    def __init__(
        self,
        per_minute: int,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = float(per_minute)
        self._per_second = per_minute / 60.0
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    def take(self, client: str) -> float:
        """Spend one token: 0.0 if allowed, else the seconds until the next token is due."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.pop(client, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._per_second)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self._per_second
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return wait

    def charge(self, client: str) -> None:
        """Spend one of `client`'s tokens, or raise ApiError 429 with Retry-After."""
        wait = self.take(client)
        if wait > 0:
            raise api_error(
                "rate_limited", f"client={client}", headers={"Retry-After": str(math.ceil(wait))}
            )

    def __len__(self) -> int:
        return len(self._buckets)


class InFlightCap:
    """Counts Stripe calls in flight on this instance and refuses (503) more than `limit` at
    once, of which the browser endpoints may take all but `reserve` (docs/abuse.md)."""

    def __init__(self, limit: int, reserve: int) -> None:
        self._limit = limit
        self._public_limit = limit - reserve
        self._in_flight = 0

    def try_enter(self, *, public: bool) -> bool:
        if self._in_flight >= (self._public_limit if public else self._limit):
            return False
        self._in_flight += 1
        return True

    def leave(self) -> None:
        self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight
