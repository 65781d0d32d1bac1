"""harpy behind a real nginx and a real HAProxy, started here on loopback ports with the
configurations docs/proxies.md shows (docs/deploy/), and spoofing attempts without them.

The client connects from 127.0.0.5, an address of its own on the loopback network, so that
harpy can tell it from the proxies (127.0.0.1, trusted by default): a client that writes
``X-Forwarded-For``, ``Forwarded`` or a PROXY header itself is not believed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import harpy
from harpy.protocol.proxy import V2_SIGNATURE
from tests.e2e.test_cli import harpy_process, make_cert
from tests.helpers import RawClient, serve, serve_asgi
from tests.timing import TIMEOUT, scaled

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "docs" / "deploy"
CLIENT = "127.0.0.5"  # the client's own loopback address: not a trusted proxy
OTHER_CLIENT = "127.0.0.6"
HOST = "chat.example.com"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# ------------------------------------------------------------------------------ the app


def who_app(**options: Any) -> harpy.App:
    """An app whose /who route tells each client, on open, what harpy knows of it."""
    app = harpy.App(**options)

    def open_(ws: harpy.WebSocket[Any]) -> None:
        ws.send({"remote_address": ws.remote_address, "url": ws.url, "tls": ws.tls})

    app.ws("/who", {"open": open_})
    return app


def upgrade_head(host: str = HOST, origin: str | None = None, extra: str = "") -> bytes:
    origin_line = f"Origin: {origin}\r\n" if origin else ""
    return (
        f"GET /who HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{origin_line}{extra}\r\n"
    ).encode("latin-1")


async def open_client(
    port: int, *, source: str = CLIENT, tls: ssl.SSLContext | None = None
) -> RawClient:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=tls,
            server_hostname="localhost" if tls else None,
            local_addr=(source, 0),
        ),
        TIMEOUT,
    )
    return RawClient(reader, writer)


async def who(
    port: int,
    *,
    source: str = CLIENT,
    tls: ssl.SSLContext | None = None,
    prefix: bytes = b"",
    host: str = HOST,
    origin: str | None = f"https://{HOST}",
    extra: str = "",
    keep: list[RawClient] | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """Upgrade to /who through ``port``; the status, and what harpy said on open (101 only).
    An upgraded connection is closed after, or added to ``keep`` to stay open."""
    client = await open_client(port, source=source, tls=tls)
    status, _, _ = await client.request(prefix + upgrade_head(host, origin, extra))
    info = None
    if status == 101:
        opcode, payload = await client.read_frame()
        assert opcode == 1
        info = json.loads(payload)
    if status == 101 and keep is not None:
        keep.append(client)
    else:
        await client.close()
    return status, info


SPOOFING = (
    "X-Forwarded-For: 6.6.6.6, 127.0.0.1\r\n"
    "Forwarded: for=7.7.7.7;proto=https;host=evil.example\r\n"
    "X-Forwarded-Proto: https\r\n"
    "X-Forwarded-Host: evil.example\r\n"
)


@contextlib.contextmanager
def access_records() -> Iterator[list[logging.LogRecord]]:
    """The ``harpy.access`` records made meanwhile."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger("harpy.access")
    handler, level = Keep(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


# ------------------------------------------------------------------------------ the proxies


def tool(name: str) -> str:
    """A proxy's executable: ``make test-deps`` installs the Debian package."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin")
    assert path is not None, f"{name} is not installed (make test-deps installs it)"
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deployed(name: str, replacements: dict[str, str]) -> str:
    """The documented configuration with the lines the test changes (ports, certificates);
    each must be there, so the docs cannot drift from what is tested."""
    text = (DEPLOY / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"docs/deploy/{name} no longer has {old!r}"
        text = text.replace(old, new)
    return text


async def can_connect(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def running(argv: list[str], ports: list[int], log: Path) -> AsyncIterator[None]:
    """Run a proxy until the test ends; ready once each of ``ports`` accepts connections."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + scaled(15.0)
        for port in ports:
            for _ in range(2000):
                assert proc.returncode is None, f"{argv[0]} exited: {log.read_text()}"
                if await can_connect(port):
                    break
                assert loop.time() < deadline, f"{argv[0]} is not listening on {port}"
                await asyncio.sleep(0.02)
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), scaled(10.0))
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def nginx(tmp_path: Path, harpy_port: int, cert: Path, key: Path) -> AsyncIterator[int]:
    port = free_port()
    conf = deployed(
        "nginx.conf",
        {
            "worker_processes auto;": "worker_processes 1;",
            "http {": (
                f"http {{\n    access_log off;\n"
                f"    client_body_temp_path {tmp_path}/body;\n    proxy_temp_path {tmp_path}/proxy;"
            ),
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "server 127.0.0.1:3000;": f"server 127.0.0.1:{harpy_port};",
            "/etc/ssl/certs/chat.example.com.pem": str(cert),
            "/etc/ssl/private/chat.example.com.key": str(key),
        },
    )
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    argv = [
        tool("nginx"), "-p", str(tmp_path), "-c", str(path), "-e", str(tmp_path / "error.log"),
        "-g", f"daemon off; pid {tmp_path}/nginx.pid;",
    ]  # fmt: skip
    async with running(argv, [port], tmp_path / "nginx.out"):
        yield port


@contextlib.asynccontextmanager
async def haproxy(
    tmp_path: Path, http_backend: int, tcp_backend: int, pem: Path
) -> AsyncIterator[tuple[int, int]]:
    http_port, tcp_port = free_port(), free_port()
    conf = deployed(
        "haproxy.cfg",
        {
            "maxconn 50000": "maxconn 512",
            "bind :443 ": f"bind 127.0.0.1:{http_port} ",
            "bind :8443 ": f"bind 127.0.0.1:{tcp_port} ",
            "127.0.0.1:3000": f"127.0.0.1:{http_backend}",
            "127.0.0.1:3001": f"127.0.0.1:{tcp_backend}",
            "/etc/haproxy/certs/chat.example.com.pem": str(pem),
        },
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(conf)
    argv = [tool("haproxy"), "-f", str(path), "-db"]
    async with running(argv, [http_port, tcp_port], tmp_path / "haproxy.out"):
        yield http_port, tcp_port


def client_tls(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


# ------------------------------------------------------------------------------ nginx


async def test_behind_nginx_the_client_its_scheme_and_host_are_harpys(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    app = who_app(proxy_headers=True, max_connections_per_ip=1)
    clients: list[RawClient] = []
    with access_records() as records:
        async with serve(app), nginx(tmp_path, app.port or 0, cert, key) as port:
            # The client wrote forwarding headers of its own: nginx appends what it saw,
            # and harpy reads from the right.
            status, info = await who(port, tls=client_tls(cert), extra=SPOOFING, keep=clients)
            assert status == 101
            assert info == {"remote_address": CLIENT, "url": f"wss://{HOST}/who", "tls": True}
            # The per-IP limit counts the client, not nginx: a second connection from the
            # same client is over it, another client is not.
            assert (await who(port, tls=client_tls(cert)))[0] == 429
            status, info = await who(port, source=OTHER_CLIENT, tls=client_tls(cert), keep=clients)
            assert status == 101 and info is not None
            assert info["remote_address"] == OTHER_CLIENT
            for client in clients:
                await client.close()
            # The same-origin check compares with the forwarded host: another site is refused.
            status, _ = await who(
                port, source="127.0.0.7", tls=client_tls(cert), origin="https://evil.example"
            )
            assert status == 403
    upgrades = [r for r in records if getattr(r, "event", "") == "upgrade"]
    assert [getattr(r, "remote_address", "") for r in upgrades] == [CLIENT, OTHER_CLIENT]
    refused = {getattr(r, "status", 0): getattr(r, "remote_address", "") for r in records}
    assert refused[429] == CLIENT and refused[403] == "127.0.0.7"


async def test_behind_nginx_without_proxy_headers_nothing_forwarded_is_believed(
    tmp_path: Path,
) -> None:
    cert, key = make_cert(tmp_path)
    app = who_app(allowed_origins="*")  # the page's origin cannot match Host: upstream's name
    async with serve(app), nginx(tmp_path, app.port or 0, cert, key) as port:
        status, info = await who(port, tls=client_tls(cert), extra=SPOOFING)
    assert status == 101
    assert info == {"remote_address": "127.0.0.1", "url": "ws://harpy/who", "tls": False}


# ------------------------------------------------------------------------------ HAProxy


def haproxy_pem(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = make_cert(tmp_path)
    pem = tmp_path / "haproxy.pem"
    pem.write_text(cert.read_text() + key.read_text())
    return cert, pem


async def test_behind_haproxy_http_mode_and_tcp_mode_with_proxy_v2(tmp_path: Path) -> None:
    cert, pem = haproxy_pem(tmp_path)
    http_app = who_app(proxy_headers=True)
    # TCP mode: the PROXY v2 header names the client; headers are on too, and since the
    # client (not HAProxy) is then the peer whose headers they are, the spoofed ones are
    # ignored.
    tcp_app = who_app(proxy_protocol=True, proxy_headers=True)
    async with (
        serve(http_app),
        serve(tcp_app),
        haproxy(tmp_path, http_app.port or 0, tcp_app.port or 0, pem) as ports,
    ):
        http_port, tcp_port = ports
        expected = {"remote_address": CLIENT, "url": f"wss://{HOST}/who", "tls": True}
        assert await who(http_port, tls=client_tls(cert), extra=SPOOFING) == (101, expected)
        assert await who(tcp_port, tls=client_tls(cert), extra=SPOOFING) == (101, expected)
        # A browser's page from another site is still refused through either.
        evil = "https://evil.example"
        assert (await who(http_port, tls=client_tls(cert), origin=evil))[0] == 403
        assert (await who(tcp_port, tls=client_tls(cert), origin=evil))[0] == 403


# ------------------------------------------------------------------------------ no proxy


async def test_a_direct_client_is_not_believed() -> None:
    """Proxy headers and the PROXY protocol on, but the client is no trusted proxy: what it
    says of itself is ignored (a PROXY header is then no HTTP request: 400)."""
    app = who_app(proxy_headers=True, proxy_protocol=True)
    async with serve(app):
        port = app.port or 0
        status, info = await who(port, extra=SPOOFING, origin=None)
        assert status == 101
        assert info == {"remote_address": CLIENT, "url": f"ws://{HOST}/who", "tls": False}
        v1 = b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\n"
        assert (await who(port, prefix=v1))[0] == 400
        v2 = V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([6, 6, 6, 6, 127, 0, 0, 1, 0, 1, 0, 80])
        assert (await who(port, prefix=v2))[0] == 400


async def test_proxy_protocol_from_a_trusted_peer() -> None:
    app = who_app(proxy_protocol=True, handshake_timeout=scaled(1.0))
    async with serve(app):
        port = app.port or 0
        v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\n"
        status, info = await who(port, source="127.0.0.1", prefix=v1, origin=None)
        assert status == 101 and info is not None
        assert info["remote_address"] == "203.0.113.9"
        # Version 2, in pieces, with the SSL TLV: the client used TLS to the proxy.
        addresses = bytes([198, 51, 100, 7, 10, 0, 0, 1]) + struct.pack("!HH", 4000, 443)
        ssl_tlv = b"\x20\x00\x05\x01\x00\x00\x00\x00"
        body = addresses + ssl_tlv
        v2 = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
        client = await open_client(port, source="127.0.0.1")
        for piece in (v2[:7], v2[7:20], v2[20:], upgrade_head(origin=None)):
            client.writer.write(piece)
            await client.writer.drain()
        status, _, _ = await client.read_response()
        assert status == 101
        info = json.loads((await client.read_frame())[1])
        await client.close()
        assert info == {"remote_address": "198.51.100.7", "url": f"wss://{HOST}/who", "tls": True}
        # LOCAL (a health check): the real peer stands.
        local = V2_SIGNATURE + b"\x20\x00\x00\x00"
        status, info = await who(port, source="127.0.0.1", prefix=local, origin=None)
        assert status == 101 and info is not None and info["remote_address"] == "127.0.0.1"


async def test_a_bad_or_missing_proxy_header_closes_without_an_answer() -> None:
    app = who_app(proxy_protocol=True, handshake_timeout=scaled(1.0))
    async with serve(app):
        port = app.port or 0
        for bad in (
            b"GET /who HTTP/1.1\r\n\r\n",  # no header: the peer is to send one
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            V2_SIGNATURE + b"\x31\x11\x00\x00",  # version 3
            b"PROXY " + b"1" * 200,  # no CRLF within the bound
        ):
            client = await open_client(port, source="127.0.0.1")
            client.writer.write(bad)
            assert await client.at_eof(), bad
            await client.close()
        # Nothing within the handshake timeout: closed, with no HTTP answer.
        client = await open_client(port, source="127.0.0.1")
        assert await client.at_eof(timeout=scaled(5.0))
        await client.close()


async def test_under_asgi_the_servers_client_and_scheme_are_taken_as_given() -> None:
    """The App's proxy options are the native server's: under uvicorn, ``scope["client"]``
    and ``scope["scheme"]`` are what harpy reports (uvicorn trusts 127.0.0.1 only, so the
    headers of a client at 127.0.0.5 are not believed there either)."""
    app = who_app(proxy_headers=True, forwarded_allow_ips="*")
    async with serve_asgi(app) as url:
        port = int(url.rsplit(":", 1)[1])
        status, info = await who(port, extra=SPOOFING, origin=None)
    assert status == 101
    assert info == {"remote_address": CLIENT, "url": f"ws://{HOST}/who", "tls": False}


async def test_configure_proxies_keeps_what_it_is_not_given_and_only_before_listening() -> None:
    app = who_app(forwarded_allow_ips="10.0.0.0/8")
    assert not app.proxy_trust.enabled
    app.configure_proxies(proxy_protocol=True)
    trust = app.proxy_trust
    assert trust.protocol and not trust.headers and trust.allowed == ("10.0.0.0/8",)
    app.configure_proxies(proxy_headers=True, forwarded_allow_ips="192.0.2.1")
    trust = app.proxy_trust
    assert trust.protocol and trust.headers and trust.allowed == ("192.0.2.1",)
    async with serve(app):
        with pytest.raises(harpy.HarpyError, match="already listening"):
            app.configure_proxies(proxy_headers=False)


async def test_a_proxy_on_the_unix_socket_is_trusted_as_loopback(tmp_path: Path) -> None:
    app = who_app(proxy_headers=True)
    path = str(tmp_path / "harpy.sock")
    await app.listen(uds=path)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), TIMEOUT)
        client = RawClient(reader, writer)
        extra = "X-Forwarded-For: 6.6.6.6, 192.0.2.44\r\nX-Forwarded-Proto: https\r\n"
        status, _, _ = await client.request(upgrade_head(extra=extra, origin=None))
        assert status == 101
        info = json.loads((await client.read_frame())[1])
        assert info == {"remote_address": "192.0.2.44", "url": f"wss://{HOST}/who", "tls": True}
        await client.close()
    finally:
        await app.shutdown(timeout=scaled(2.0))


async def test_the_command_line_flags(tmp_path: Path) -> None:
    (tmp_path / "who.py").write_text(WHO_MODULE)
    v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\n"
    async with harpy_process("who:app", "--proxy-protocol", cwd=tmp_path) as (_, url):
        port = int(url.rsplit(":", 1)[1])
        status, info = await who(port, source="127.0.0.1", prefix=v1, origin=None)
        assert status == 101 and info is not None
        assert info["remote_address"] == "203.0.113.9"
    trusted = ("--forwarded-allow-ips", "10.0.0.0/8")
    async with harpy_process(
        "who:app", "--proxy-protocol", "--proxy-headers", *trusted, cwd=tmp_path
    ) as (_, url):
        port = int(url.rsplit(":", 1)[1])
        # 127.0.0.1 is no longer trusted: its PROXY line is no request.
        assert (await who(port, source="127.0.0.1", prefix=v1))[0] == 400


WHO_MODULE = """
import harpy

app = harpy.App()


@app.ws("/who")
class Who:
    def open(self, ws):
        ws.send({"remote_address": ws.remote_address, "url": ws.url, "tls": ws.tls})
"""


def test_a_bad_forwarded_allow_ips_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from harpy.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["examples.echo:app", "--forwarded-allow-ips", "10.0.0.1/8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "forwarded_allow_ips" in err and "10.0.0.1/8" in err and err.count("\n") == 1
