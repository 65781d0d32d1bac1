"""harpy's upgrade parser against h11, on a corpus of good and bad requests.

Every request of the corpus is a complete WebSocket upgrade but for one HTTP-level detail (the
request line, a header's syntax, Host), so the two parsers must agree on accepting or refusing
it.  Where harpy is stricter than HTTP on purpose, the case is listed in STRICTER with why.
"""

from __future__ import annotations

import h11
import pytest

from harpy.exceptions import HandshakeError
from harpy.protocol.handshake import check_upgrade, parse_request

#: harpy's default ``max_header_size`` (the server refuses a longer head with 431); h11 is
#: given the same bound.
MAX_HEAD = 8192

UPGRADE = [
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
]
HOST = b"Host: example.com"


def request(
    line: bytes = b"GET /chat HTTP/1.1",
    extra: tuple[bytes, ...] = (),
    *,
    host: tuple[bytes, ...] = (HOST,),
    eol: bytes = b"\r\n",
) -> bytes:
    """A whole upgrade request, blank line included."""
    return eol.join([line, *host, *UPGRADE, *extra]) + eol + eol


CORPUS: dict[str, bytes] = {
    # Good requests.
    "plain": request(),
    "query": request(b"GET /chat?room=1&x=%20 HTTP/1.1"),
    "root": request(b"GET / HTTP/1.1"),
    "path-parameters": request(b"GET /a/b;c=d/~e HTTP/1.1"),
    "percent-not-hex": request(b"GET /a%zz HTTP/1.1"),
    "host-with-port": request(host=(b"Host: example.com:8080",)),
    "host-ipv6": request(host=(b"Host: [::1]:8080",)),
    "host-empty": request(host=(b"Host:",)),
    "host-last": request(host=())[:-2] + HOST + b"\r\n\r\n",
    "lower-case-names": request(extra=(b"x-custom: v",)),
    "tabs-around-value": request(extra=(b"X-A:\tv\t",)),
    "no-space-after-colon": request(extra=(b"X-A:v",)),
    "empty-value": request(extra=(b"X-A:",)),
    "whitespace-only-value": request(extra=(b"X-A:   ",)),
    "inner-spaces": request(extra=(b"X-A: a  b\tc",)),
    "obs-text-value": request(extra=(b"X-A: caf\xe9",)),
    "token-chars-in-name": request(extra=(b"X-!#$%&'*+-.^_`|~: v",)),
    "another-header": request(extra=(b"Cache-Control: no-cache",)),
    "http-1.2": request(b"GET / HTTP/1.2"),
    "many-headers": request(extra=tuple(b"X-%d: %d" % (i, i) for i in range(50))),
    "long-value-under-limit": request(extra=(b"X-A: " + b"a" * (MAX_HEAD // 2),)),
    # Bad requests: both refuse.
    "missing-host": request(host=()),
    "repeated-host": request(host=(HOST, HOST)),
    "repeated-host-different": request(host=(HOST, b"host: other.example")),
    "space-before-colon": request(extra=(b"X-A : v",)),
    "tab-before-colon": request(extra=(b"X-A\t: v",)),
    "no-colon": request(extra=(b"Garbage",)),
    "empty-name": request(extra=(b": v",)),
    "separator-in-name": request(extra=(b"X(A): v",)),
    "obs-text-in-name": request(extra=(b"X\xe9: v",)),
    "nul-in-value": request(extra=(b"X-A: a\x00b",)),
    "cr-in-value": request(extra=(b"X-A: a\rb",)),
    "vertical-tab-in-value": request(extra=(b"X-A: a\x0bb",)),
    "form-feed-in-value": request(extra=(b"X-A: a\x0cb",)),
    "nul-in-name": request(extra=(b"X\x00A: v",)),
    "bad-method-char": request(b"G@T /chat HTTP/1.1"),
    "empty-method": request(b" /chat HTTP/1.1"),
    "two-spaces": request(b"GET  /chat HTTP/1.1"),
    "tab-separator": request(b"GET\t/chat HTTP/1.1"),
    "trailing-space": request(b"GET /chat HTTP/1.1 "),
    "space-in-target": request(b"GET /a b HTTP/1.1"),
    "non-ascii-target": request(b"GET /caf\xe9 HTTP/1.1"),
    "lower-case-version": request(b"GET /chat http/1.1"),
    "version-1.10": request(b"GET /chat HTTP/1.10"),
    "version-10.1": request(b"GET /chat HTTP/10.1"),
    "http-0.9": b"GET /chat\r\n\r\n",
    "leading-blank-line": b"\r\n" + request(),
    "leading-whitespace-line": request(host=(b" " + HOST,)),
    "long-value-over-limit": request(extra=(b"X-A: " + b"a" * (MAX_HEAD * 2),)),
}

#: Requests HTTP accepts and harpy refuses on purpose, with the reason.
STRICTER: dict[str, str] = {
    "lower-case-method": "RFC 6455 4.2.1: an upgrade is a GET (methods are case-sensitive): 405",
    "post": "RFC 6455 4.2.1: an upgrade is a GET: 405",
    "http-1.0": "RFC 6455 4.2.1: an upgrade needs HTTP/1.1 or later",
    "http-1.0-no-host": "RFC 6455 4.2.1: an upgrade needs HTTP/1.1 or later",
    "http-2.0": "an HTTP/2 upgrade is RFC 8441's CONNECT, never an HTTP/1 request line",
    "absolute-form": "RFC 6455 3 and 4.2.1: the target is a resource name (origin form)",
    "asterisk-form": "RFC 6455 3 and 4.2.1: the target is a resource name (origin form)",
    "bare-lf": "RFC 9112 2.2 lets a server refuse bare LF; harpy's head ends at CRLF CRLF",
    "obs-fold": "RFC 9112 5.2 lets a server refuse obs-fold with 400",
    "folded-header-at-tab": "RFC 9112 5.2 lets a server refuse obs-fold with 400",
    "control-char-in-value": "RFC 9110 5.5: a CTL other than HTAB is invalid in a field value",
    "del-in-value": "RFC 9110 5.5: DEL is a CTL, invalid in a field value",
}

STRICTER_CORPUS: dict[str, bytes] = {
    "lower-case-method": request(b"get /chat HTTP/1.1"),
    "post": request(b"POST /chat HTTP/1.1"),
    "http-1.0": request(b"GET /chat HTTP/1.0"),
    "http-1.0-no-host": request(b"GET /chat HTTP/1.0", host=()),
    "http-2.0": request(b"GET /chat HTTP/2.0"),
    "absolute-form": request(b"GET http://example.com/chat HTTP/1.1"),
    "asterisk-form": request(b"OPTIONS * HTTP/1.1"),
    "bare-lf": request(eol=b"\n"),
    "obs-fold": request(extra=(b"X-A: a", b" b")),
    "folded-header-at-tab": request(extra=(b"X-A: a", b"\tb")),
    "control-char-in-value": request(extra=(b"X-A: a\x01b",)),
    "del-in-value": request(extra=(b"X-A: a\x7fb",)),
}


def harpy_accepts(raw: bytes) -> bool:
    """What harpy's server does with ``raw`` arriving: the head ends at the first CRLF CRLF and
    is bounded by max_header_size; then parse_request and check_upgrade decide."""
    end = raw.find(b"\r\n\r\n")
    if end < 0 or end > MAX_HEAD:
        return False
    try:
        check_upgrade(parse_request(raw[:end]))
    except HandshakeError as exc:
        assert 400 <= exc.status < 500, exc
        return False
    return True


def h11_accepts(raw: bytes) -> bool:
    """h11 as a server, reading ``raw`` in 1 KiB pieces as a socket would deliver it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        for start in range(0, len(raw), 1024):
            conn.receive_data(raw[start : start + 1024])
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return isinstance(event, h11.Request)
    except h11.RemoteProtocolError:
        return False
    return False


def test_the_corpus_is_large_and_both_kinds() -> None:
    assert len(CORPUS) + len(STRICTER_CORPUS) >= 40
    verdicts = {h11_accepts(raw) for raw in CORPUS.values()}
    assert verdicts == {True, False}
    assert set(STRICTER) == set(STRICTER_CORPUS)


@pytest.mark.parametrize("raw", list(CORPUS.values()), ids=list(CORPUS))
def test_harpy_and_h11_agree(raw: bytes) -> None:
    assert harpy_accepts(raw) is h11_accepts(raw)


@pytest.mark.parametrize("name", list(STRICTER_CORPUS))
def test_harpy_is_stricter_on_purpose(name: str) -> None:
    raw = STRICTER_CORPUS[name]
    assert h11_accepts(raw), f"h11 refuses {name}: move it to CORPUS"
    assert not harpy_accepts(raw), STRICTER[name]
