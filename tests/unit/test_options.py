"""Route options: one frozen dataclass, each default once, typed keyword arguments."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

import harpy
from harpy.app.options import RouteOptions, RouteOptionsKw, make_options
from harpy.server import Limits


def test_the_keyword_arguments_are_exactly_the_fields() -> None:
    fields = {f.name: str(f.type) for f in dataclasses.fields(RouteOptions)}
    hints = typing.get_type_hints(RouteOptionsKw)
    assert set(hints) == set(fields)
    # The same types, so App(**kw) and ws(**kw) check what the dataclass declares.
    annotations = {
        name: t.__forward_arg__ if isinstance(t, typing.ForwardRef) else str(t)
        for name, t in RouteOptionsKw.__annotations__.items()
    }
    assert annotations == fields


def test_route_options_are_limits_and_frozen() -> None:
    options = RouteOptions()
    assert isinstance(options, Limits)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.idle_timeout = 1.0  # type: ignore[misc]
    # Each default is the field's own: the limits' defaults come from Limits.
    assert options.max_message_size == Limits().max_message_size == 16 * 1024 * 1024


def test_a_misspelt_option_is_a_clear_error_at_run_time() -> None:
    app = harpy.App()
    with pytest.raises(TypeError, match=r"'compresion' \(did you mean 'compression'\?\)"):
        app.ws("/x", {}, compresion=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="the options are: max_message_size"):
        harpy.App(nonsense=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="idle_timeout"):
        harpy.Router().ws("/x", {}, idle_timout=3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idle_timeout": -1}, "idle_timeout must not be below 0"),
        ({"max_missed_pongs": 0}, "max_missed_pongs must not be below 1"),
        ({"max_message_size": 1.5}, "max_message_size must be a whole number"),
        ({"send_pings": 1}, "send_pings must be True or False"),
        ({"default_room": ""}, "default_room must be a non-empty string"),
        ({"subprotocols": "chat"}, "subprotocols must be a list"),
        ({"write_low_water": 10, "write_high_water": 5}, "write_low_water must not exceed"),
        ({"require_subprotocol": True}, "require_subprotocol needs a list"),
        ({"allowed_origins": "https://app.example"}, 'allowed_origins must be a list .*"\\*"'),
        ({"allowed_origins": ["https://a.example", ""]}, "allowed_origins must be a list"),
        ({"allowed_origins": 1}, "allowed_origins must be a list"),
    ],
)
def test_values_are_checked_once_with_the_name(options: dict[str, object], message: str) -> None:
    with pytest.raises(harpy.ConfigurationError, match=message):
        make_options(None, options, "test")


@pytest.mark.parametrize("value", [None, "*", ["https://app.example"], ("http://localhost:5173",)])
def test_allowed_origins_values(value: object) -> None:
    assert make_options(None, {"allowed_origins": value}, "test").allowed_origins == value


def test_a_route_starts_from_the_app_defaults() -> None:
    app = harpy.App(idle_timeout=30, subprotocols=["v1"])
    app.ws("/a", {}, require_subprotocol=True)
    app.ws("/b", {}, idle_timeout=5)
    a, b = app.routes
    assert a.options.idle_timeout == 30 and a.options.require_subprotocol
    assert b.options.idle_timeout == 5 and b.options.subprotocols == ["v1"]


def test_a_misspelt_option_is_a_type_error_under_mypy(tmp_path: Path) -> None:
    source = tmp_path / "typo.py"
    source.write_text(
        textwrap.dedent(
            """
            import harpy

            app = harpy.App(idle_timeout=5.0)
            app.ws("/ok", {}, compression=True, max_message_size=1024)
            app.ws("/typo", {}, compresion=True)
            harpy.App(max_mesage_size=1)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert 'Unexpected keyword argument "compresion"' in out, out
    assert 'Unexpected keyword argument "max_mesage_size"' in out, out
    assert out.count("error:") == 2, out
