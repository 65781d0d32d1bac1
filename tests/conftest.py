"""Test set-up: coroutine tests run on uvloop (the loop harpy serves on), each bounded in time."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from harpy import protocol
from tests.helpers import ServeApp, serve, serve_asgi
from tests.timing import FACTOR_VARIABLE, TIMEOUT_FACTOR, scaled

#: No test may run longer than this (seconds): a hang fails instead of blocking the suite.
TEST_TIMEOUT = scaled(60.0)


def pytest_report_header() -> str:
    core = "compiled" if protocol.COMPILED else "pure Python"
    return f"harpy core: {core}; {FACTOR_VARIABLE}={TIMEOUT_FACTOR:g}"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in a fresh uvloop event loop with a timeout."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}

    async def main() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**kwargs), TEST_TIMEOUT)

    uvloop.run(main())
    return True


@pytest.fixture(params=["native", "asgi"])
def serve_app(request: pytest.FixtureRequest) -> ServeApp:
    """Serve a harpy App on 127.0.0.1 port 0: natively, then under uvicorn through the ASGI
    adapter.  ``async with serve_app(app) as url`` yields the ``ws://host:port`` base URL.

    A plain fixture returning a factory: the test runner above runs coroutine tests, not async
    fixtures.
    """
    return serve if request.param == "native" else serve_asgi


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put back the root logger's handlers and level, and the access log's level, after every
    test: a test that runs the command line installs a handler on the stderr that pytest
    captures for that test alone, and a later record written there would fail."""
    root = logging.getLogger()
    access = logging.getLogger("harpy.access")
    saved = root.handlers[:], root.level, access.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    access.setLevel(saved[2])
