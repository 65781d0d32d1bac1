"""Fixtures of the channels tests: Redis servers of their own (as the backplane tests), a
token maker, and a TCP proxy whose connections a test can cut."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest

from tests.backplane.conftest import _run_server, nats_url, redis_broker, redis_url

__all__ = ["SECRET", "jetstream_args", "nats_url", "redis_broker", "redis_url", "token"]

#: The HMAC key of the tests' tokens (HS256 wants 32 bytes at least).
SECRET = "channels-test-secret-0123456789abcdef"


def token(sub: str = "42", ttl: float = 60.0, **claims: Any) -> str:
    """A token for ``sub`` valid ``ttl`` seconds (negative: expired)."""
    return pyjwt.encode({"sub": sub, "exp": int(time.time() + ttl), **claims}, SECRET)


def jetstream_args(binary: str, port: int) -> list[str]:
    """nats-server with JetStream, storing in ``jetstream/`` of its temporary folder."""
    return [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", "jetstream"]


@pytest.fixture(scope="session")
def jetstream_url() -> Iterator[str]:
    """A nats-server with JetStream shared by the session's tests (each uses its own streams)."""
    for broker in _run_server("nats-server", jetstream_args):
        yield f"nats://{broker.address}"
