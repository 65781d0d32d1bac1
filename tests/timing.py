"""Time in the tests: one factor for slow machines, and waiting for a condition, not a guess.

Every bound on a wait (``asyncio.wait_for``, a client's timeout, a deadline, the per-test limit)
goes through :func:`scaled`, so ``HARPY_TEST_TIMEOUT_FACTOR=3`` gives a slow or busy machine three
times as long.  Timeouts that are the configuration under test (an ``idle_timeout`` whose effect
a test measures) are not scaled; the waits around them are.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
from collections.abc import Callable

#: The name of the environment variable holding the factor (like websockets'
#: ``WEBSOCKETS_TESTS_TIMEOUT_FACTOR``).
FACTOR_VARIABLE = "HARPY_TEST_TIMEOUT_FACTOR"


def _read_factor() -> float:
    raw = os.environ.get(FACTOR_VARIABLE, "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        raise RuntimeError(f"{FACTOR_VARIABLE} must be a number, not {raw!r}") from None
    if not (factor > 0 and math.isfinite(factor)):
        raise RuntimeError(f"{FACTOR_VARIABLE} must be a positive number, not {raw!r}")
    return factor


#: What every timing bound is multiplied by (1.0 unless the environment says otherwise).
TIMEOUT_FACTOR = _read_factor()


def scaled(seconds: float) -> float:
    """``seconds`` as a bound on this machine: multiplied by ``HARPY_TEST_TIMEOUT_FACTOR``."""
    return seconds * TIMEOUT_FACTOR


#: The usual bound on one wait for something that should happen promptly (a reply, a close).
TIMEOUT = scaled(5.0)

#: How often :func:`eventually` looks again.
POLL_INTERVAL = 0.01


async def eventually(
    predicate: Callable[[], object],
    timeout: float = TIMEOUT,
    what: str = "",
    interval: float = POLL_INTERVAL,
) -> None:
    """Poll ``predicate()`` every ``interval`` (10 ms) until it is true; fail after ``timeout``
    seconds, saying what was awaited (``what``, else the predicate's source line).

    ``timeout`` is already a bound on this machine (``TIMEOUT`` or ``scaled(...)``).  For
    server-side state that no event reports (a handler having run after the client left, a
    registry emptied); a reply or an ``asyncio.Event`` is better where there is one.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(math.ceil(timeout / interval) + 1):
        if predicate():
            return
        if loop.time() >= deadline:
            break
        await asyncio.sleep(interval)
    if predicate():
        return
    raise AssertionError(f"not true within {timeout:.2f} s: {what or _describe(predicate)}")


def _describe(predicate: Callable[[], object]) -> str:
    """The predicate's source line (a lambda's is the clearest message), or its repr."""
    try:
        return inspect.getsource(predicate).strip()  # type: ignore[arg-type]
    except (OSError, TypeError):
        return repr(predicate)
