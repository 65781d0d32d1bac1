"""Fixtures of the channels tests: Redis servers of their own (as the backplane tests), a
token maker, and a TCP proxy whose connections a test can cut."""

from __future__ import annotations

import time
from typing import Any

import jwt as pyjwt

from tests.backplane.conftest import nats_url, redis_broker, redis_url

__all__ = ["SECRET", "nats_url", "redis_broker", "redis_url", "token"]

#: The HMAC key of the tests' tokens (HS256 wants 32 bytes at least).
SECRET = "channels-test-secret-0123456789abcdef"


def token(sub: str = "42", ttl: float = 60.0, **claims: Any) -> str:
    """A token for ``sub`` valid ``ttl`` seconds (negative: expired)."""
    return pyjwt.encode({"sub": sub, "exp": int(time.time() + ttl), **claims}, SECRET)
