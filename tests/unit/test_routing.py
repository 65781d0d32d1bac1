"""Tests for the upgrade-request route table: syntax, precedence, decoding and duplicates."""

from __future__ import annotations

import itertools
import re

import pytest

from harpy.app import routing as _routing
from harpy.app.routing import RouteTable
from harpy.exceptions import ConfigurationError, RouteError


def table_of(*patterns: str) -> RouteTable[str]:
    """A table whose value for each route is its own pattern, so results name the winner."""
    table: RouteTable[str] = RouteTable()
    for pattern in patterns:
        table.add(pattern, pattern)
    return table


# --- static routes -------------------------------------------------------------------------


def test_static_routes_match_exactly() -> None:
    table = table_of("/", "/chat", "/chat/lobby")
    assert table.match("/") == ("/", {})
    assert table.match("/chat") == ("/chat", {})
    assert table.match("/chat/lobby") == ("/chat/lobby", {})
    assert table.match("/chat/other") is None
    assert table.match("/cha") is None
    assert table.match("/chatx") is None
    assert table.match("/chat/lobby/x") is None


def test_empty_table_matches_nothing() -> None:
    table: RouteTable[int] = RouteTable()
    assert table.match("/") is None
    assert table.match("/x") is None
    assert len(table) == 0
    assert list(table) == []


def test_match_is_case_sensitive() -> None:
    table = table_of("/Chat", "/room/:id")
    assert table.match("/Chat") == ("/Chat", {})
    assert table.match("/chat") is None
    assert table.match("/ROOM/1") is None
    assert table.match("/room/AbC") == ("/room/:id", {"id": "AbC"})


@pytest.mark.parametrize("pattern", ["/chat", "/chat/"])
@pytest.mark.parametrize("path", ["/chat", "/chat/"])
def test_one_trailing_slash_is_ignored(pattern: str, path: str) -> None:
    assert table_of(pattern).match(path) == (pattern, {})


def test_trailing_slash_is_ignored_for_parameter_routes() -> None:
    table = table_of("/room/:id/")
    assert table.match("/room/1") == ("/room/:id/", {"id": "1"})
    assert table.match("/room/1/") == ("/room/:id/", {"id": "1"})


def test_only_one_trailing_slash_is_ignored() -> None:
    table = table_of("/", "/chat", "/room/:id")
    assert table.match("/chat//") is None
    assert table.match("/room/1//") is None
    # '//' is two empty segments, not the root with a trailing slash.
    assert table.match("//") is None


def test_empty_segments_in_a_path_do_not_match() -> None:
    table = table_of("/a/b", "/a/:x/b")
    assert table.match("/a//b") is None
    assert table.match("//a/b") is None


@pytest.mark.parametrize("path", ["", "chat", "*", "http://host/chat"])
def test_paths_not_starting_with_a_slash_never_match(path: str) -> None:
    table = table_of("/chat", "/:x", "/*")
    assert table.match(path) is None


def test_value_none_is_distinguished_from_no_match() -> None:
    table: RouteTable[None] = RouteTable()
    table.add("/a", None)
    table.add("/b/:x", None)
    assert table.match("/a") == (None, {})
    assert table.match("/b/1") == (None, {"x": "1"})
    assert table.match("/c") is None


def test_match_returns_the_registered_object_and_a_fresh_dict() -> None:
    handler = object()
    table: RouteTable[object] = RouteTable()
    table.add("/a", handler)
    table.add("/b/:x", handler)
    first = table.match("/b/1")
    assert first is not None
    assert first[0] is handler
    first[1]["x"] = "changed"
    assert table.match("/b/1") == (handler, {"x": "1"})
    static = table.match("/a")
    assert static is not None
    static[1]["y"] = "added"
    assert table.match("/a") == (handler, {})


# --- parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["/room/:id", "/room/{id}"])
def test_parameter_captures_one_segment(pattern: str) -> None:
    table = table_of(pattern)
    assert table.match("/room/42") == (pattern, {"id": "42"})
    assert table.match("/room") is None
    assert table.match("/room/") is None
    assert table.match("/room//") is None
    assert table.match("/room/42/x") is None


def test_several_parameters_and_both_syntaxes() -> None:
    table = table_of("/org/:org/room/{room}/:sub")
    assert table.match("/org/acme/room/lobby/main") == (
        "/org/:org/room/{room}/:sub",
        {"org": "acme", "room": "lobby", "sub": "main"},
    )
    assert table.match("/org/acme/hall/lobby/main") is None


def test_parameter_at_the_root() -> None:
    table = table_of("/:name")
    assert table.match("/x") == ("/:name", {"name": "x"})
    assert table.match("/") is None
    assert table.match("/x/y") is None


def test_unicode_identifier_is_a_valid_parameter_name() -> None:
    assert table_of("/r/:café").match("/r/1") == ("/r/:café", {"café": "1"})


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/room/a%20b", "a b"),
        ("/room/caf%C3%A9", "café"),
        ("/room/a%2Fb", "a/b"),
        ("/room/100%25", "100%"),
        ("/room/a+b", "a+b"),
        ("/room/plain", "plain"),
    ],
)
def test_parameter_values_are_percent_decoded(path: str, value: str) -> None:
    assert table_of("/room/:id").match(path) == ("/room/:id", {"id": value})


def test_encoded_slash_stays_inside_one_parameter() -> None:
    table = table_of("/room/:id", "/room/:id/:sub")
    assert table.match("/room/a%2Fb") == ("/room/:id", {"id": "a/b"})
    assert table.match("/room/a/b") == ("/room/:id/:sub", {"id": "a", "sub": "b"})


def test_static_segments_are_matched_on_the_raw_text() -> None:
    table = table_of("/caf%C3%A9", "/x/a%20b/:id")
    assert table.match("/caf%C3%A9") == ("/caf%C3%A9", {})
    assert table.match("/café") is None
    assert table.match("/caf%c3%a9") is None
    assert table.match("/x/a%20b/1") == ("/x/a%20b/:id", {"id": "1"})
    assert table.match("/x/a b/1") is None

    decoded = table_of("/café")
    assert decoded.match("/café") == ("/café", {})
    assert decoded.match("/caf%C3%A9") is None


# --- wildcards -----------------------------------------------------------------------------


def test_wildcard_captures_the_rest_of_the_path() -> None:
    table = table_of("/files/*")
    assert table.match("/files/a") == ("/files/*", {"*": "a"})
    assert table.match("/files/a/b/c") == ("/files/*", {"*": "a/b/c"})
    assert table.match("/files/a/b/") == ("/files/*", {"*": "a/b"})
    assert table.match("/files") == ("/files/*", {"*": ""})
    assert table.match("/files/") == ("/files/*", {"*": ""})
    assert table.match("/file") is None
    assert table.match("/filesx") is None


def test_wildcard_keeps_empty_segments_of_the_rest() -> None:
    table = table_of("/files/*")
    assert table.match("/files//a") == ("/files/*", {"*": "/a"})
    assert table.match("/files/a//b") == ("/files/*", {"*": "a//b"})


def test_named_wildcard() -> None:
    table = table_of("/static/:version/*path")
    assert table.match("/static/v1/css/site.css") == (
        "/static/:version/*path",
        {"version": "v1", "path": "css/site.css"},
    )
    assert table.match("/static/v1") == ("/static/:version/*path", {"version": "v1", "path": ""})


def test_wildcard_value_is_percent_decoded() -> None:
    table = table_of("/files/*")
    assert table.match("/files/my%20dir/a%2Fb") == ("/files/*", {"*": "my dir/a/b"})


def test_root_wildcard_matches_everything() -> None:
    table = table_of("/*")
    assert table.match("/") == ("/*", {"*": ""})
    assert table.match("/a") == ("/*", {"*": "a"})
    assert table.match("/a/b/") == ("/*", {"*": "a/b"})
    assert table.match("//") == ("/*", {"*": "/"})


# --- precedence and backtracking -----------------------------------------------------------


def test_static_beats_parameter() -> None:
    table = table_of("/room/:id", "/room/new")
    assert table.match("/room/new") == ("/room/new", {})
    assert table.match("/room/old") == ("/room/:id", {"id": "old"})


def test_parameter_beats_wildcard() -> None:
    table = table_of("/files/*", "/files/:name")
    assert table.match("/files/x") == ("/files/:name", {"name": "x"})
    assert table.match("/files/x/y") == ("/files/*", {"*": "x/y"})
    assert table.match("/files") == ("/files/*", {"*": ""})


def test_static_beats_wildcard_including_zero_segments() -> None:
    table = table_of("/files/*", "/files", "/files/index")
    assert table.match("/files") == ("/files", {})
    assert table.match("/files/index") == ("/files/index", {})
    assert table.match("/files/other") == ("/files/*", {"*": "other"})


def test_leftmost_segment_decides() -> None:
    table = table_of("/a/:x/c", "/a/b/:y")
    assert table.match("/a/b/c") == ("/a/b/:y", {"y": "c"})
    assert table.match("/a/z/c") == ("/a/:x/c", {"x": "z"})

    wild = table_of("/:x/b", "/a/*")
    assert wild.match("/a/b") == ("/a/*", {"*": "b"})
    assert wild.match("/z/b") == ("/:x/b", {"x": "z"})


def test_backtracks_from_static_to_parameter() -> None:
    table = table_of("/a/:x/c", "/a/b/:y/d")
    assert table.match("/a/b/c") == ("/a/:x/c", {"x": "b"})
    assert table.match("/a/b/c/d") == ("/a/b/:y/d", {"y": "c"})


def test_backtracks_from_static_to_wildcard() -> None:
    table = table_of("/a/*", "/a/b/c")
    assert table.match("/a/b") == ("/a/*", {"*": "b"})
    assert table.match("/a/b/c") == ("/a/b/c", {})
    assert table.match("/a/b/d") == ("/a/*", {"*": "b/d"})


def test_backtracking_drops_values_captured_on_a_failed_branch() -> None:
    table = table_of("/u/:id/posts/:post/edit", "/u/*")
    assert table.match("/u/1/posts/2/edit") == (
        "/u/:id/posts/:post/edit",
        {"id": "1", "post": "2"},
    )
    assert table.match("/u/1/posts/2/view") == ("/u/*", {"*": "1/posts/2/view"})


def test_backtracks_several_levels() -> None:
    table = table_of("/a/b/c/:x", "/a/:p/:q/e", "/:r/*")
    assert table.match("/a/b/c/d") == ("/a/b/c/:x", {"x": "d"})
    assert table.match("/a/b/c/e") == ("/a/b/c/:x", {"x": "e"})
    assert table.match("/a/b/d/e") == ("/a/:p/:q/e", {"p": "b", "q": "d"})
    assert table.match("/a/b/d/f") == ("/:r/*", {"r": "a", "*": "b/d/f"})
    assert table.match("/a") == ("/:r/*", {"r": "a", "*": ""})


def test_parameter_names_belong_to_each_route() -> None:
    table = table_of("/room/:id/info", "/room/{name}/members")
    assert table.match("/room/1/info") == ("/room/:id/info", {"id": "1"})
    assert table.match("/room/1/members") == ("/room/{name}/members", {"name": "1"})


ORDER_ROUTES = (
    "/files",
    "/files/*",
    "/files/:name",
    "/files/:name/raw",
    "/files/readme",
    "/:section/*rest",
)

ORDER_EXPECTED: dict[str, tuple[str, dict[str, str]] | None] = {
    "/": None,
    "/files": ("/files", {}),
    "/files/": ("/files", {}),
    "/files/readme": ("/files/readme", {}),
    "/files/readme/raw": ("/files/:name/raw", {"name": "readme"}),
    "/files/a": ("/files/:name", {"name": "a"}),
    "/files/a/raw": ("/files/:name/raw", {"name": "a"}),
    "/files/a/b": ("/files/*", {"*": "a/b"}),
    "/files/a/raw/x": ("/files/*", {"*": "a/raw/x"}),
    "/docs": ("/:section/*rest", {"section": "docs", "rest": ""}),
    "/docs/a/b": ("/:section/*rest", {"section": "docs", "rest": "a/b"}),
    "/Files/a": ("/:section/*rest", {"section": "Files", "rest": "a"}),
}


def test_results_do_not_depend_on_registration_order() -> None:
    for order in itertools.permutations(ORDER_ROUTES):
        table = table_of(*order)
        for path, expected in ORDER_EXPECTED.items():
            assert table.match(path) == expected, (order, path)


# --- malformed patterns --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "chat",
        "chat/",
        ":id",
        "*",
        "//",
        "/a//b",
        "//a",
        "/a//",
        "/a:b",
        "/a:",
        "/x{y}z",
        "/x{y}",
        "/{y}z",
        "/{x",
        "/x}",
        "/{",
        "/}",
        "/a*",
        "/a*b",
        "/:",
        "/{}",
        "/:1x",
        "/{1x}",
        "/:a-b",
        "/{a b}",
        "/:{x}",
        "/{:x}",
        "/{x}}",
        "/*/a",
        "/a/*/b",
        "/*x/b",
        "/**",
        "/*1",
        "/*a-b",
        "/:x/:x",
        "/:x/{x}",
        "/{x}/a/:x",
        "/:x/*x",
    ],
)
def test_malformed_pattern_is_rejected_naming_it(pattern: str) -> None:
    table = table_of("/ok")
    with pytest.raises(RouteError, match=re.escape(repr(pattern))):
        table.add(pattern, pattern)
    assert table.patterns() == ["/ok"]


def test_route_error_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        table_of("nope")
    with pytest.raises(ValueError):
        table_of("nope")


@pytest.mark.parametrize(
    "pattern",
    ["/", "/a", "/a/", "/a.b-c_d~e", "/a%20b", "/:x", "/{x}", "/*", "/*x", "/a/:_/{__}/*rest"],
)
def test_wellformed_patterns_are_accepted(pattern: str) -> None:
    assert table_of(pattern).patterns() == [pattern]


# --- duplicates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/chat", "/chat"),
        ("/chat", "/chat/"),
        ("/chat/", "/chat"),
        ("/room/:id", "/room/{room}"),
        ("/room/:id", "/room/:id/"),
        ("/room/{a}/x/:b", "/room/:c/x/{d}"),
        ("/files/*", "/files/*rest"),
        ("/files/*rest", "/files/*path"),
        ("/:a/*", "/{b}/*c"),
    ],
)
def test_equivalent_pattern_is_a_duplicate_naming_both(first: str, second: str) -> None:
    table = table_of(first)
    with pytest.raises(RouteError, match=re.escape(repr(second)) + ".*" + re.escape(repr(first))):
        table.add(second, "second")
    assert table.patterns() == [first]
    assert list(table) == [(first, first)]


def test_failed_duplicate_leaves_matching_unchanged() -> None:
    table = table_of("/room/:id", "/files/*")
    with pytest.raises(RouteError):
        table.add("/room/{other}", "other")
    with pytest.raises(RouteError):
        table.add("/files/*rest", "other")
    assert table.match("/room/1") == ("/room/:id", {"id": "1"})
    assert table.match("/files/a/b") == ("/files/*", {"*": "a/b"})
    assert len(table) == 2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/files", "/files/*"),
        ("/a/:x", "/a/b"),
        ("/a/:x", "/a/*"),
        ("/:x/b", "/a/:y"),
        ("/a/:x", "/a/:x/b"),
        ("/A", "/a"),
        ("/", "/*"),
    ],
)
def test_different_shapes_are_not_duplicates(first: str, second: str) -> None:
    table = table_of(first, second)
    assert table.patterns() == [first, second]


# --- iteration -----------------------------------------------------------------------------


def test_iteration_follows_registration_order() -> None:
    table: RouteTable[int] = RouteTable()
    patterns = ["/z", "/files/*", "/a/:x", "/", "/chat/", "/m/{y}/n"]
    for number, pattern in enumerate(patterns):
        table.add(pattern, number)
    assert len(table) == len(patterns)
    assert table.patterns() == patterns
    assert list(table) == [(pattern, number) for number, pattern in enumerate(patterns)]
    assert dict(table) == {pattern: number for number, pattern in enumerate(patterns)}


def test_iterating_while_adding_sees_a_snapshot() -> None:
    table = table_of("/a", "/b")
    seen = []
    for pattern, _ in table:
        seen.append(pattern)
        table.add(pattern + "/x", "x")
    assert seen == ["/a", "/b"]
    assert table.patterns() == ["/a", "/b", "/a/x", "/b/x"]


def test_repr_lists_patterns() -> None:
    assert repr(table_of("/a", "/:b")) == "<RouteTable ['/a', '/:b']>"


# --- many routes ---------------------------------------------------------------------------


def test_many_static_routes_resolve_without_the_trie(monkeypatch: pytest.MonkeyPatch) -> None:
    table: RouteTable[int] = RouteTable()
    for number in range(1000):
        table.add(f"/s/{number}", number)
    table.add("/s/:other/tail", -1)
    table.add("/p/:id", -2)
    for number in range(1000):
        assert table.match(f"/s/{number}") == (number, {})
    assert table.match("/s/1000") is None
    assert table.match("/s/7/tail") == (-1, {"other": "7"})
    assert table.match("/p/7") == (-2, {"id": "7"})

    # A static path is one dict lookup: it never reaches the trie walk.
    def fail(*args: object) -> None:
        raise AssertionError("static path walked the trie")

    monkeypatch.setattr(_routing, "_walk", fail)
    assert table.match("/s/999") == (999, {})
    assert table.match("/s/0/") == (0, {})


def test_many_parameter_routes_resolve() -> None:
    table: RouteTable[int] = RouteTable()
    for number in range(1000):
        table.add(f"/r{number}/:id/x{number}", number)
    assert table.match("/r500/abc/x500") == (500, {"id": "abc"})
    assert table.match("/r500/abc/x501") is None
