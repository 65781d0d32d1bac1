"""The opening handshake as pure functions: parse_request, check_upgrade and the answers' bytes."""

from __future__ import annotations

import base64

import pytest

from harpy.exceptions import HandshakeError
from harpy.protocol import handshake
from harpy.protocol.handshake import (
    Request,
    accept_key,
    build_accept,
    build_refusal,
    check_upgrade,
    origin_allowed,
    parse_request,
    shared_text,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

VALID_HEAD = (
    b"GET /chat/room?x=1&y=%20 HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13"
)

BASE_HEADERS = [
    ("host", "example.com"),
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-key", KEY),
    ("sec-websocket-version", "13"),
]


def make_request(
    method: str = "GET",
    *,
    drop: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> Request:
    """A valid upgrade request with headers dropped, replaced or added."""
    replace = replace or {}
    headers = [(n, replace.get(n, v)) for n, v in BASE_HEADERS if n not in drop]
    return Request(method, "/", headers + (extra or []))


def refusal_parts(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(": ")
        assert colon, line
        headers.append((name, value))
    return lines[0], headers, body


# -- parse_request --------------------------------------------------------------------------------


def test_parse_valid_request() -> None:
    request = parse_request(VALID_HEAD)
    assert request.method == "GET"
    assert request.target == "/chat/room?x=1&y=%20"
    assert request.path == "/chat/room"
    assert request.query_string == "x=1&y=%20"
    assert request.headers == [
        ("host", "server.example.com"),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", KEY),
        ("origin", "http://example.com"),
        ("sec-websocket-protocol", "chat, superchat"),
        ("sec-websocket-version", "13"),
    ]
    assert request.get("host") == "server.example.com"
    assert request.get("missing") is None
    assert request.get("missing", "x") == "x"
    assert request.tokens("sec-websocket-protocol") == ["chat", "superchat"]
    assert check_upgrade(request) == KEY


def test_parse_path_without_query() -> None:
    request = parse_request(b"GET / HTTP/1.1\r\nHost: x")
    assert (request.path, request.query_string, request.target) == ("/", "", "/")


def test_parse_request_line_only() -> None:
    request = parse_request(b"GET /a HTTP/1.1")
    assert request.headers == []
    assert request.path == "/a"


@pytest.mark.parametrize(
    "name", [b"SEC-WEBSOCKET-KEY", b"sec-websocket-key", b"Sec-WebSocket-Key", b"sEc-WeBsOcKeT-kEy"]
)
def test_header_names_are_lowercased(name: bytes) -> None:
    request = parse_request(b"GET / HTTP/1.1\r\n" + name + b": " + KEY.encode())
    assert request.headers == [("sec-websocket-key", KEY)]
    assert request.get("sec-websocket-key") == KEY


def test_header_value_case_is_kept() -> None:
    request = parse_request(b"GET / HTTP/1.1\r\nX-Token: AbC dEf")
    assert request.get("x-token") == "AbC dEf"


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b"X: value", "value"),
        (b"X:value", "value"),
        (b"X:   value  ", "value"),
        (b"X:\t value \t", "value"),
        (b"X:", ""),
        (b"X: a b  c", "a b  c"),
        (b"X: caf\xe9", "caf\xe9"),
        (b"X: a:b:c", "a:b:c"),
    ],
)
def test_header_values(line: bytes, value: str) -> None:
    assert parse_request(b"GET / HTTP/1.1\r\n" + line).headers == [("x", value)]


def test_duplicate_headers_are_kept_in_order() -> None:
    request = parse_request(
        b"GET / HTTP/1.1\r\n"
        b"Connection: keep-alive\r\n"
        b"X-A: 1\r\n"
        b"connection: Upgrade\r\n"
        b"X-A: 2\r\n"
        b"X-A: 3"
    )
    assert request.get_all("x-a") == ["1", "2", "3"]
    assert request.get("x-a") == "1"
    assert request.get_all("connection") == ["keep-alive", "Upgrade"]
    assert request.tokens("connection") == ["keep-alive", "upgrade"]
    assert request.headers == [
        ("connection", "keep-alive"),
        ("x-a", "1"),
        ("connection", "Upgrade"),
        ("x-a", "2"),
        ("x-a", "3"),
    ]


@pytest.mark.parametrize("method", [b"GET", b"POST", b"PUT", b"M-SEARCH", b"X_CUSTOM!"])
def test_parse_token_methods(method: bytes) -> None:
    assert parse_request(method + b" / HTTP/1.1").method == method.decode()


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"GET", id="method-only"),
        pytest.param(b"GET /", id="no-version"),
        pytest.param(b"GET  / HTTP/1.1", id="double-space"),
        pytest.param(b"GET / HTTP/1.1 ", id="trailing-space"),
        pytest.param(b" GET / HTTP/1.1", id="leading-space"),
        pytest.param(b"GET / HTTP/1.1 extra", id="four-parts"),
        pytest.param(b"GET\t/\tHTTP/1.1", id="tabs"),
        pytest.param(b"GET / HTTP/1.1\nHost: x", id="bare-lf"),
        pytest.param(b"GET /a b HTTP/1.1", id="space-in-target"),
    ],
)
def test_malformed_request_line(line: bytes) -> None:
    with pytest.raises(HandshakeError) as exc_info:
        parse_request(line)
    assert exc_info.value.status == 400


@pytest.mark.parametrize(
    "version",
    [
        b"HTTP/1.0",
        b"HTTP/0.9",
        b"HTTP/2.0",
        b"HTTP/2",
        b"HTTP/1.",
        b"HTTP/1.x",
        b"HTTP/1.1x",
        b"HTTP/1.10",
        b"http/1.1",
        b"HTTP/11",
        b"HTTPS/1.1",
        b"HTTP 1.1",
    ],
)
def test_unsupported_or_malformed_version(version: bytes) -> None:
    with pytest.raises(HandshakeError) as exc_info:
        parse_request(b"GET / " + version + b"\r\nHost: x")
    assert exc_info.value.status == 400


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(b"G(T", id="paren"),
        pytest.param(b"GE\x00T", id="nul"),
        pytest.param(b"G\xc9T", id="latin1"),
        pytest.param(b"GET:", id="colon"),
        pytest.param(b"G,T", id="comma"),
        pytest.param(b'"GET"', id="quoted"),
    ],
)
def test_malformed_method(method: bytes) -> None:
    with pytest.raises(HandshakeError) as exc_info:
        parse_request(method + b" / HTTP/1.1")
    assert exc_info.value.status == 400


def test_empty_method() -> None:
    with pytest.raises(HandshakeError) as exc_info:
        parse_request(b" /x HTTP/1.1")
    assert exc_info.value.status == 400


@pytest.mark.parametrize("target", [b"foo", b"*", b"", b"?a=1", b"chat/room", b"\\"])
def test_malformed_target(target: bytes) -> None:
    with pytest.raises(HandshakeError) as exc_info:
        parse_request(b"GET " + target + b" HTTP/1.1")
    assert exc_info.value.status == 400


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"Host example.com", id="no-colon"),
        pytest.param(b": value", id="empty-name"),
        pytest.param(b"Host : example.com", id="space-before-colon"),
        pytest.param(b"Host\t: example.com", id="tab-before-colon"),
        pytest.param(b" Host: example.com", id="leading-space"),
        pytest.param(b"\tcontinued", id="obs-fold"),
        pytest.param(b"X(y): z", id="paren-in-name"),
        pytest.param(b"X\xe9: 1", id="latin1-name"),
        pytest.param(b"X Y: 1", id="space-in-name"),
        pytest.param(b"", id="empty-line"),
    ],
)
def test_malformed_header(line: bytes) -> None:
    with pytest.raises(HandshakeError) as exc_info:
        parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n" + line + b"\r\nX-After: 1")
    assert exc_info.value.status == 400


def test_trailing_crlf_is_an_empty_header_line() -> None:
    # The head ends before the blank line: a trailing CRLF leaves an empty header line.
    with pytest.raises(HandshakeError) as exc_info:
        parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert exc_info.value.status == 400


@pytest.mark.parametrize("bad", [b"\x00", b"\r", b"\n"], ids=["nul", "cr", "lf"])
def test_header_value_with_cr_lf_or_nul(bad: bytes) -> None:
    """RFC 9110 5.5: such a value is rejected, or each of those characters replaced by SP."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Value: left" + bad + b"right: 1\r\nX-After: 1"
    try:
        request = parse_request(head)
    except HandshakeError as exc:
        assert exc.status == 400
    else:
        for _name, value in request.headers:
            assert not set(value) & {"\x00", "\r", "\n"}, request.headers


@pytest.mark.parametrize("target", [b"/caf\xe9", b"/a\x7fb", b"/a\x01"])
def test_target_outside_visible_ascii_is_refused(target: bytes) -> None:
    # RFC 9112 3.2: a request target is visible ASCII; clients percent-encode the rest.
    with pytest.raises(HandshakeError) as exc_info:
        parse_request(b"GET " + target + b" HTTP/1.1\r\nHost: x")
    assert exc_info.value.status == 400


# -- check_upgrade --------------------------------------------------------------------------------


def assert_refused(
    request: Request, status: int, header: tuple[str, str] | None = None
) -> HandshakeError:
    with pytest.raises(HandshakeError) as exc_info:
        check_upgrade(request)
    exc = exc_info.value
    assert exc.status == status
    if header is not None:
        assert header in exc.headers
    return exc


def test_check_upgrade_valid() -> None:
    assert check_upgrade(make_request()) == KEY


@pytest.mark.parametrize(
    "upgrade",
    [None, "h2c", "", "web socket", "websockets", "TLS/1.0"],
)
def test_not_an_upgrade_is_426(upgrade: str | None) -> None:
    if upgrade is None:
        request = make_request(drop=("upgrade",))
    else:
        request = make_request(replace={"upgrade": upgrade})
    assert_refused(request, 426, ("Upgrade", "websocket"))


def test_plain_get_is_426() -> None:
    request = parse_request(b"GET /index.html HTTP/1.1\r\nHost: example.com")
    assert_refused(request, 426, ("Upgrade", "websocket"))


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "get", "CONNECT"])
def test_non_get_is_405(method: str) -> None:
    exc = assert_refused(make_request(method), 405)
    assert ("Allow", "GET") in exc.headers


@pytest.mark.parametrize("connection", [None, "keep-alive", "close", "upgrades", "", "up grade"])
def test_missing_connection_upgrade_is_400(connection: str | None) -> None:
    if connection is None:
        request = make_request(drop=("connection",))
    else:
        request = make_request(replace={"connection": connection})
    assert_refused(request, 400)


@pytest.mark.parametrize("version", [None, "8", "7", "12", "14", "", "13, 8", " 13x"])
def test_wrong_version_is_426(version: str | None) -> None:
    if version is None:
        request = make_request(drop=("sec-websocket-version",))
    else:
        request = make_request(replace={"sec-websocket-version": version})
    assert_refused(request, 426, ("Sec-WebSocket-Version", "13"))


def test_repeated_version_header_is_426() -> None:
    request = make_request(extra=[("sec-websocket-version", "8")])
    assert_refused(request, 426, ("Sec-WebSocket-Version", "13"))


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("not base64 at all!!!", id="not-base64"),
        pytest.param("dGhlIHNhbXBsZSBub25jZQ", id="no-padding"),
        pytest.param("dGhlIHNhbXBsZSBub25jZQ=", id="short-padding"),
        pytest.param("dGhlIHNhbXBsZSBub25j*Q==", id="bad-char"),
        pytest.param(base64.b64encode(b"x" * 15).decode(), id="15-bytes"),
        pytest.param(base64.b64encode(b"x" * 17).decode(), id="17-bytes"),
        pytest.param(base64.b64encode(b"x" * 32).decode(), id="32-bytes"),
        pytest.param("dGhlIHNhbXBsZSBub25jZQ==\xe9", id="latin1"),
        pytest.param("dGhlIHNhbXBs ZSBub25jZQ==", id="inner-space"),
    ],
)
def test_bad_key_is_400(key: str | None) -> None:
    if key is None:
        request = make_request(drop=("sec-websocket-key",))
    else:
        request = make_request(replace={"sec-websocket-key": key})
    assert_refused(request, 400)


@pytest.mark.parametrize("second", [KEY, "AAAAAAAAAAAAAAAAAAAAAA=="])
def test_duplicate_key_is_400(second: str) -> None:
    assert_refused(make_request(extra=[("sec-websocket-key", second)]), 400)


@pytest.mark.parametrize("key", [KEY, "AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w=="])
def test_other_valid_keys(key: str) -> None:
    assert check_upgrade(make_request(replace={"sec-websocket-key": key})) == key


@pytest.mark.parametrize(
    ("upgrade", "connection"),
    [
        ("websocket", "Upgrade"),
        ("WebSocket", "upgrade"),
        ("WEBSOCKET", "UPGRADE"),
        ("websocket", "keep-alive, Upgrade"),
        ("websocket", "Upgrade, keep-alive"),
        ("websocket", "keep-alive,upgrade"),
        ("websocket", "  keep-alive ,  Upgrade  "),
        ("h2c, websocket", "Upgrade"),
        ("websocket, h2c", "HTTP2-Settings, Upgrade"),
    ],
)
def test_tokens_are_case_insensitive_and_comma_separated(upgrade: str, connection: str) -> None:
    request = make_request(replace={"upgrade": upgrade, "connection": connection})
    assert check_upgrade(request) == KEY


def test_tokens_across_repeated_headers() -> None:
    request = make_request(
        drop=("connection",),
        extra=[("connection", "keep-alive"), ("connection", "Upgrade")],
    )
    assert check_upgrade(request) == KEY


def test_check_upgrade_order() -> None:
    # The HTTP rule of exactly one Host comes first, then not an upgrade at all, then the
    # method, then the rest.
    assert_refused(Request("POST", "/", []), 400)
    bare = Request("POST", "/", [("host", "example.com")])
    assert_refused(bare, 426, ("Upgrade", "websocket"))
    post = make_request("POST", drop=("sec-websocket-key", "sec-websocket-version"))
    assert_refused(post, 405)


@pytest.mark.parametrize(
    "hosts",
    [[], [("host", "example.com"), ("host", "example.com")], [("host", "a"), ("host", "b")]],
    ids=["missing", "repeated-same", "repeated-different"],
)
def test_missing_or_repeated_host_is_refused(hosts: list[tuple[str, str]]) -> None:
    # RFC 6455 4.2.1 item 2 and RFC 9112 3.2: exactly one Host, else 400.
    request = make_request(drop=("host",), extra=hosts)
    exc = assert_refused(request, 400)
    assert exc.reason == "Missing or repeated Host"


def test_parse_then_check_with_any_header_case() -> None:
    head = (
        b"GET /ws HTTP/1.1\r\nHOST: a\r\nuPgRaDe: WebSocket\r\nCONNECTION: keep-alive, UPGRADE\r\n"
        b"SEC-WEBSOCKET-KEY: " + KEY.encode() + b"\r\nsec-websocket-version: 13"
    )
    assert check_upgrade(parse_request(head)) == KEY


# -- accept_key, build_accept ---------------------------------------------------------------------


def test_accept_key_rfc_example() -> None:
    # RFC 6455 section 1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("key", "accept"),
    [
        # base64(sha1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")), computed separately.
        ("x3JJHMbDL1EzLkh9GBhXDw==", "HSmrc0sMlYUkAGmm5OPpG2HaGWk="),
        ("AQIDBAUGBwgJCgsMDQ4PEA==", "C/0nmHhBztSRGR1CwL6Tf4ZjwpY="),
    ],
)
def test_accept_key_other_examples(key: str, accept: str) -> None:
    assert accept_key(key) == accept


def test_build_accept_exact_bytes() -> None:
    assert build_accept(KEY) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )
    assert build_accept(KEY, []) == build_accept(KEY)


def test_build_accept_extra_headers() -> None:
    extra = [("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Extensions", "permessage-deflate")]
    assert build_accept(KEY, extra) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"\r\n"
    )


# -- build_refusal --------------------------------------------------------------------------------


def test_build_refusal_exact_bytes() -> None:
    assert build_refusal(426, "WebSocket only", [("Upgrade", "websocket")]) == (
        b"HTTP/1.1 426 Upgrade Required\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: close\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 15\r\n"
        b"\r\n"
        b"WebSocket only\n"
    )


def test_build_refusal_default_body_is_the_phrase() -> None:
    assert build_refusal(404) == (
        b"HTTP/1.1 404 Not Found\r\n"
        b"Connection: close\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 10\r\n"
        b"\r\n"
        b"Not Found\n"
    )


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (405, "Method Not Allowed"),
        (426, "Upgrade Required"),
        (429, "Too Many Requests"),
        (500, "Internal Server Error"),
        (503, "Service Unavailable"),
        (499, "Error"),
        (599, "Error"),
    ],
)
@pytest.mark.parametrize("reason", ["", "nope", "refusé ✗ 😀", "x" * 5000])
def test_build_refusal_structure(status: int, phrase: str, reason: str) -> None:
    data = build_refusal(status, reason)
    status_line, headers, body = refusal_parts(data)
    assert status_line == f"HTTP/1.1 {status} {phrase}"
    assert body == ((reason or phrase) + "\n").encode()
    assert ("Content-Length", str(len(body))) in headers
    assert [v for n, v in headers if n.lower() == "content-length"] == [str(len(body))]
    assert ("Connection", "close") in headers
    assert ("Content-Type", "text/plain; charset=utf-8") in headers


def test_build_refusal_extra_headers() -> None:
    data = build_refusal(405, "", [("Allow", "GET")])
    status_line, headers, body = refusal_parts(data)
    assert status_line == "HTTP/1.1 405 Method Not Allowed"
    assert headers[0] == ("Allow", "GET")
    assert ("Connection", "close") in headers
    assert body == b"Method Not Allowed\n"


def test_build_refusal_keeps_a_given_connection_header() -> None:
    data = build_refusal(401, "", [("WWW-Authenticate", "Bearer"), ("connection", "close")])
    _, headers, _ = refusal_parts(data)
    assert [(n, v) for n, v in headers if n.lower() == "connection"] == [("connection", "close")]
    assert ("WWW-Authenticate", "Bearer") in headers


@pytest.mark.parametrize(
    "exc",
    [
        HandshakeError(426, "x", [("Upgrade", "websocket")]),
        HandshakeError(400, "bad key"),
        HandshakeError(426, "v", [("Sec-WebSocket-Version", "13")]),
    ],
)
def test_refusal_from_handshake_error(exc: HandshakeError) -> None:
    data = build_refusal(exc.status, exc.reason, exc.headers)
    status_line, headers, body = refusal_parts(data)
    assert status_line.startswith(f"HTTP/1.1 {exc.status} ")
    for header in exc.headers:
        assert header in headers
    assert body == (exc.reason + "\n").encode()


# -- origin_allowed -------------------------------------------------------------------------------

SAME_ORIGIN = [
    ("http://example.com", "example.com", True),
    ("https://example.com", "example.com", True),
    ("https://example.com", "example.com:443", True),
    ("wss://example.com", "example.com:443", True),
    ("http://example.com", "example.com:80", True),
    ("https://example.com:443", "example.com", True),
    ("http://example.com:8000", "example.com:8000", True),
    ("https://example.com:8000", "example.com:8000", True),  # scheme-insensitive
    ("HTTP://Example.COM/", "example.com", True),
    ("http://[::1]:8000", "[::1]:8000", True),
    ("http://example.com", "example.com:443", False),  # port 80 is not 443
    ("https://example.com", "example.com:80", False),
    ("http://example.com:8000", "example.com", False),
    ("http://localhost:5173", "localhost:8000", False),  # a dev server on another port
    ("http://evil.example", "example.com", False),
    ("http://example.com.evil", "example.com", False),
    ("http://localhost:8000", "127.0.0.1:8000", False),
    ("null", "example.com", False),  # a sandboxed or file:// page
    ("ftp://example.com", "example.com", False),  # no default port: not a web origin
    ("http://example.com:99999", "example.com", False),
    ("http://example.com:x", "example.com", False),
    ("http://example.com", "example.com:x", False),
    ("http://example.com", None, False),
    ("http://", "example.com", False),
]


@pytest.mark.parametrize(("origin", "host", "expected"), SAME_ORIGIN)
def test_same_origin_without_a_list(origin: str, host: str | None, expected: bool) -> None:
    assert origin_allowed(origin, host, None) is expected


def test_a_list_of_origins_or_any() -> None:
    allowed = frozenset({"https://app.example", "http://localhost:5173"})
    assert origin_allowed("https://app.example", "api.example", allowed)
    assert origin_allowed("HTTP://LOCALHOST:5173/", "api.example", allowed)
    # The list replaces the same-origin rule: the page's own origin must be listed too.
    assert not origin_allowed("https://api.example", "api.example", allowed)
    assert not origin_allowed("https://evil.example", "api.example", allowed)
    assert origin_allowed("https://evil.example", None, frozenset({"*"}))


# ------------------------------------------------------------------------ the compact request


def request_facts(request: Request) -> tuple[object, ...]:
    """What the server reads of a request, by each of its accessors."""
    return (
        request.get("origin"),
        request.get("missing", "-"),
        request.get_all("cookie"),
        request.tokens("connection"),
        request.tokens_cased("sec-websocket-protocol"),
        check_upgrade(request),
    )


def test_a_compacted_request_reads_the_same_from_its_raw_bytes() -> None:
    request = parse_request(VALID_HEAD + b"\r\nCookie: a=1\r\nCookie: b=2\r\nX-Empty:")
    parsed = list(request.headers)
    facts = request_facts(request)
    request.compact()
    assert request.headers == parsed
    assert request.headers is not request.headers  # parsed again on each use, never kept
    assert request_facts(request) == facts
    assert facts[2] == ["a=1", "b=2"]
    assert ("x-empty", "") in request.headers
    assert request.method == "GET"
    assert (request.path, request.query_string) == ("/chat/room", "x=1&y=%20")


def test_a_request_made_from_a_header_list_keeps_its_list_when_compacted() -> None:
    request = make_request()
    headers = request.headers
    request.compact()  # no raw bytes to keep instead (the ASGI adapter's requests)
    assert request.headers is headers


def test_method_target_and_host_are_one_object_for_every_request() -> None:
    first, second = parse_request(VALID_HEAD), parse_request(VALID_HEAD)
    assert first.method is second.method
    assert first.target is second.target
    assert first.get("host") is second.get("host")
    assert first.get("sec-websocket-key") == second.get("sec-websocket-key")


def test_the_table_of_shared_strings_stays_bounded() -> None:
    texts = [f"/path/{n}" for n in range(1000)]
    assert [shared_text(text) for text in texts] == texts
    assert len(handshake._shared) <= handshake._SHARED_MAX
    again = "".join(["/path/", "999"])
    assert shared_text(again) is shared_text("/path/999")
    long = "/" + "x" * handshake._SHARED_LONGEST
    assert shared_text(long) is long
    assert long not in handshake._shared
