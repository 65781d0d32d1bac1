"""Topics, rooms, broadcast and auto_broadcast through a real server and real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import harpy
from tests.helpers import RawClient, recv, serve
from tests.timing import TIMEOUT, eventually, scaled

SYNC = "--sync--"
KiB = 1024

Conns = dict[str, harpy.WebSocket[Any]]
MessageFn = Callable[[harpy.WebSocket[Any], str | bytes], Any]


def register(
    app: harpy.App,
    path: str,
    conns: Conns,
    message: MessageFn | None = None,
    closed: list[tuple[str, int]] | None = None,
    **options: Any,
) -> None:
    """A route whose connections are kept in ``conns`` under their ``?name=``."""

    def open_(ws: harpy.WebSocket[Any]) -> None:
        conns[ws.query.get("name", ws.id)] = ws

    def close(ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        if closed is not None:
            closed.append((ws.query.get("name", ws.id), code))

    handlers: dict[str, Any] = {"open": open_, "close": close}
    if message is not None:
        handlers["message"] = message
    app.ws(path, handlers, **options)


@contextlib.asynccontextmanager
async def clients(url: str, path: str, *names: str) -> AsyncIterator[list[ClientConnection]]:
    """Connect one client per name to ``path?name=...``, in order; close them all after."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for name in names:
            client = connect(
                f"{url}{path}?name={name}", open_timeout=TIMEOUT, close_timeout=TIMEOUT
            )
            out.append(await stack.enter_async_context(client))
        yield out


async def recv_n(client: ClientConnection, n: int) -> list[str | bytes]:
    return [await recv(client) for _ in range(n)]


async def recv_until(
    client: ClientConnection, last: str, limit: int = 10_000
) -> list[str | bytes]:
    """Every message up to (without) ``last``, among at most ``limit``."""
    got: list[str | bytes] = []
    for _ in range(limit):
        message = await recv(client)
        if message == last:
            return got
        got.append(message)
    raise AssertionError(f"no {last!r} among {limit} messages")


async def synced(app: harpy.App, *clients: ClientConnection) -> None:
    """Broadcast a marker: it must be each client's next message, so nothing else was on its way
    (every frame to one connection leaves in order)."""
    app.broadcast(SYNC)
    for client in clients:
        assert await recv(client) == SYNC


def harpy_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------------- topics


async def test_subscribe_and_unsubscribe_report_whether_anything_changed() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/t", conns)
    async with serve(app) as url, clients(url, "/t", "a"):
        ws = conns["a"]
        assert ws.subscriptions == []
        assert not ws.is_subscribed("news")
        assert ws.subscribe("news") is True
        assert ws.subscribe("news") is False
        assert ws.subscribe("alerts") is True
        assert ws.is_subscribed("news") and ws.is_subscribed("alerts")
        assert ws.subscriptions == ["alerts", "news"]
        ws.subscriptions.append("mutated")  # a copy: the connection's own set is untouched
        assert ws.subscriptions == ["alerts", "news"]
        assert app.subscriber_count("news") == 1
        assert sorted(app.topics) == ["alerts", "news"]

        assert ws.unsubscribe("news") is True
        assert ws.unsubscribe("news") is False
        assert ws.unsubscribe("never-subscribed") is False
        assert not ws.is_subscribed("news")
        assert ws.subscriptions == ["alerts"]
        assert app.topics == ["alerts"]
        assert app.subscriber_count("news") == 0
        with pytest.raises(harpy.ConfigurationError):
            ws.subscribe("")


async def test_publish_skips_the_sender_by_default() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/t", conns, message=lambda ws, m: ws.publish("news", m))
    async with serve(app) as url, clients(url, "/t", "a", "b", "c", "d") as (a, b, c, d):
        for name in "abc":
            conns[name].subscribe("news")
        # From the server side: the count is of receivers, the sender not among them.
        assert conns["a"].publish("news", "hello") == 2
        assert await recv(b) == "hello"
        assert await recv(c) == "hello"
        await synced(app, a, b, c, d)  # nothing for the sender, nothing for d (not subscribed)
        # From a client: its message handler publishes what it received.
        await a.send("from a")
        assert await recv(b) == "from a"
        assert await recv(c) == "from a"
        await synced(app, a, b, c, d)
        # A publisher need not be subscribed itself.
        await d.send("from d")
        assert [await recv(a), await recv(b), await recv(c)] == ["from d"] * 3
        await synced(app, a, b, c, d)


async def test_publish_to_self_route_option_includes_the_sender() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/self", conns, publish_to_self=True)
    register(app, "/plain", conns)
    async with (
        serve(app) as url,
        clients(url, "/self", "a", "b") as (a, b),
        clients(url, "/plain", "p") as (p,),
    ):
        for name in ("a", "b", "p"):
            conns[name].subscribe("news")
        assert conns["a"].publish("news", "one") == 3
        assert [await recv(a), await recv(b), await recv(p)] == ["one"] * 3
        await synced(app, a, b, p)  # once each, the sender too
        # The option is the publishing connection's route's: /plain still skips its sender.
        assert conns["p"].publish("news", "two") == 2
        assert [await recv(a), await recv(b)] == ["two"] * 2
        await synced(app, a, b, p)

    app = harpy.App(publish_to_self=True)  # as an app-wide default
    conns = {}
    register(app, "/t", conns)
    async with serve(app) as url, clients(url, "/t", "a") as (a,):
        conns["a"].subscribe("news")
        assert conns["a"].publish("news", "mine") == 1
        assert await recv(a) == "mine"


async def test_app_publish_reaches_every_subscriber_and_returns_the_count() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/t", conns)
    names = ("a", "b", "c", "outsider")
    async with serve(app) as url, clients(url, "/t", *names) as all_clients:
        for name in names[:3]:
            conns[name].subscribe("news")
        assert app.subscriber_count("news") == 3
        assert app.publish("news", "breaking") == 3
        for client in all_clients[:3]:
            assert await recv(client) == "breaking"
        await synced(app, *all_clients)
        assert app.publish("nobody-listens", "x") == 0
        assert app.subscriber_count("nobody-listens") == 0
        assert "nobody-listens" not in app.topics
        await synced(app, *all_clients)


async def test_a_topic_disappears_when_its_last_subscriber_leaves_or_closes() -> None:
    app = harpy.App()
    conns: Conns = {}
    closed: list[tuple[str, int]] = []
    register(app, "/t", conns, closed=closed)
    async with serve(app) as url, clients(url, "/t", "a", "b", "c") as (a, b, c):
        conns["a"].subscribe("news")
        conns["b"].subscribe("news")
        conns["c"].subscribe("sports")
        assert sorted(app.topics) == ["news", "sports"]
        conns["a"].unsubscribe("news")
        assert sorted(app.topics) == ["news", "sports"]  # b is still subscribed
        conns["b"].unsubscribe("news")
        assert app.topics == ["sports"]
        await c.close()
        await eventually(lambda: ("c", 1000) in closed)
        assert app.topics == []
        assert app.subscriber_count("sports") == 0
        assert app.publish("sports", "anyone?") == 0
        await synced(app, a, b)


async def test_thousands_of_topics_are_freed_when_the_subscriber_closes() -> None:
    def message(ws: harpy.WebSocket[Any], m: str | bytes) -> None:
        command, _, arg = str(m).partition(" ")
        if command == "subscribe-many":
            for i in range(int(arg)):
                ws.subscribe(f"topic-{i}")
        elif command == "unsubscribe-all":
            for topic in ws.subscriptions:
                ws.unsubscribe(topic)
        ws.send(str(len(ws.subscriptions)))

    app = harpy.App()
    conns: Conns = {}
    closed: list[tuple[str, int]] = []
    register(app, "/t", conns, message=message, closed=closed)
    async with serve(app) as url, clients(url, "/t", "many", "few", "again") as (m, f, again):
        await m.send("subscribe-many 5000")
        assert await recv(m) == "5000"
        await f.send("subscribe-many 10")  # topic-0..9 are shared
        assert await recv(f) == "10"
        assert len(app.topics) == 5000
        assert app.subscriber_count("topic-3") == 2
        assert app.publish("topic-4999", "last") == 1
        assert await recv(m) == "last"

        await m.close()
        await eventually(lambda: ("many", 1000) in closed)
        assert sorted(app.topics) == sorted(f"topic-{i}" for i in range(10))
        assert app.subscriber_count("topic-3") == 1
        assert app.subscriber_count("topic-4999") == 0

        # Unsubscribing while open frees them too.
        await again.send("subscribe-many 5000")
        assert await recv(again) == "5000"
        await again.send("unsubscribe-all")
        assert await recv(again) == "0"
        assert len(app.topics) == 10

        await f.close()
        await eventually(lambda: ("few", 1000) in closed)
        assert app.topics == []


async def test_shutdown_empties_topics_and_rooms() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/t", conns)
    async with serve(app) as url, clients(url, "/t", "a", "b"):
        for ws in conns.values():
            ws.subscribe("news")
            ws.join("lobby")
        assert app.topics == ["news"] and app.rooms == ["lobby"]
        await app.shutdown(timeout=scaled(2.0))  # while both clients are still connected
        assert app.topics == []
        assert app.rooms == []
        assert len(app.connections) == 0


async def test_500_messages_reach_20_subscribers_in_order() -> None:
    app = harpy.App()
    app.ws("/pub", {"message": lambda ws, m: ws.publish("feed", m)})
    app.ws("/sub", {"open": lambda ws: ws.subscribe("feed")})
    expected = [f"message {i}" for i in range(500)]
    names = [f"s{i}" for i in range(20)]
    async with (
        serve(app) as url,
        clients(url, "/sub", *names) as subs,
        clients(url, "/pub", "p") as (pub,),
    ):
        assert app.subscriber_count("feed") == 20
        readers = [asyncio.create_task(recv_n(sub, 500)) for sub in subs]
        for message in expected:  # back to back: no wait for any delivery
            await pub.send(message)
        results = await asyncio.wait_for(asyncio.gather(*readers), TIMEOUT)
        for got in results:
            assert got == expected
        await synced(app, pub, *subs)  # nothing more, and nothing to the publisher


async def test_binary_stays_binary_and_other_data_is_sent_as_json_text() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/pub", conns, message=lambda ws, m: ws.publish("feed", m))
    app.ws("/sub", {"open": lambda ws: ws.subscribe("feed")})
    async with (
        serve(app) as url,
        clients(url, "/sub", "x", "y") as subs,
        clients(url, "/pub", "p") as (pub,),
    ):
        await pub.send(b"\x00\xffbinary")
        await pub.send("text")
        for sub in subs:
            assert await recv(sub) == b"\x00\xffbinary"
            assert await recv(sub) == "text"

        assert app.publish("feed", {"type": "score", "n": [1, 2], "who": "Zoë"}) == 2
        assert app.publish("feed", [1, "two", None]) == 2
        assert app.publish("feed", bytearray(b"ba")) == 2
        assert app.publish("feed", memoryview(b"mv")) == 2
        p = conns["p"]
        assert p.publish_text("feed", "as text") == 2
        assert p.publish_binary("feed", b"as binary") == 2
        for sub in subs:
            # Compact JSON, non-ASCII kept as is, sent as a text frame.
            assert await recv(sub) == '{"type":"score","n":[1,2],"who":"Zoë"}'
            assert await recv(sub) == '[1,"two",null]'
            assert await recv(sub) == b"ba"
            assert await recv(sub) == b"mv"
            assert await recv(sub) == "as text"
            assert await recv(sub) == b"as binary"

        with pytest.raises(TypeError):
            p.publish_text("feed", b"bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            p.publish_binary("feed", "str")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            app.publish("feed", object())
        await synced(app, pub, *subs)  # the refused ones sent nothing


async def test_sends_publishes_and_broadcasts_to_one_connection_keep_their_order() -> None:
    app = harpy.App()
    conns: Conns = {}

    def message(ws: harpy.WebSocket[Any], m: str | bytes) -> None:
        # Inside a handler (the connection's writes are corked) and to another connection.
        assert isinstance(m, str)
        other = conns["a"] if ws is conns["b"] else conns["b"]
        for target in (ws, other):
            target.send(f"{m}:1")
            app.publish("t", f"{m}:2")
            target.send_json(f"{m}:3")
            app.broadcast(f"{m}:4", rooms=["r"])
            target.send(f"{m}:5")

    register(app, "/t", conns, message=message)
    async with serve(app) as url, clients(url, "/t", "a", "b") as (a, b):
        for ws in conns.values():
            ws.subscribe("t")
            ws.join("r")
        # From outside any handler, in one tick.
        ws = conns["a"]
        ws.send("x:1")
        app.publish("t", "x:2")
        ws.send_text("x:3")
        ws.broadcast("x:4", rooms=["r"], include_self=True)
        ws.send("x:5")
        assert await recv_n(a, 5) == ["x:1", "x:2", "x:3", "x:4", "x:5"]
        assert await recv_n(b, 2) == ["x:2", "x:4"]
        await b.send("y")
        # b (the sender): its own five, then the publish and broadcast made while serving a.
        assert await recv_n(b, 7) == ["y:1", "y:2", '"y:3"', "y:4", "y:5", "y:2", "y:4"]
        assert await recv_n(a, 7) == ["y:2", "y:4", "y:1", "y:2", '"y:3"', "y:4", "y:5"]
        await synced(app, a, b)


async def test_subscribe_and_unsubscribe_between_publishes_of_one_tick() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/t", conns)
    async with serve(app) as url, clients(url, "/t", "steady", "early", "late") as cs:
        steady, early, late = cs
        conns["steady"].subscribe("t")
        conns["early"].subscribe("t")
        # No await in between: all of this happens in one loop tick.
        assert app.publish("t", "1") == 2
        assert conns["late"].subscribe("t") is True
        assert app.publish("t", "2") == 3
        assert conns["early"].unsubscribe("t") is True
        assert app.publish("t", "3") == 2
        assert await recv_n(steady, 3) == ["1", "2", "3"]
        assert await recv_n(early, 2) == ["1", "2"]
        assert await recv_n(late, 2) == ["2", "3"]
        await synced(app, *cs)


async def test_subscribers_come_and_go_while_a_handler_publishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    app = harpy.App()

    def subscriber_message(ws: harpy.WebSocket[Any], m: str | bytes) -> None:
        if m == "leave":
            ws.unsubscribe("feed")
            ws.send("left")

    app.ws("/pub", {"message": lambda ws, m: app.publish("feed", m)})
    app.ws("/sub", {"open": lambda ws: ws.subscribe("feed"), "message": subscriber_message})
    expected = [f"m{i}" for i in range(300)]
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(serve(app))
        steady = await stack.enter_async_context(clients(url, "/sub", "s1", "s2", "s3"))
        leavers = await stack.enter_async_context(clients(url, "/sub", "l1", "l2", "l3"))
        (pub,) = await stack.enter_async_context(clients(url, "/pub", "p"))

        async def join() -> ClientConnection:
            return await stack.enter_async_context(connect(f"{url}/sub", open_timeout=TIMEOUT))

        steady_reads = [asyncio.create_task(recv_until(c, "end")) for c in steady]
        leaver_reads = [asyncio.create_task(recv_until(c, "left")) for c in leavers]
        joins = []
        for i, message in enumerate(expected):
            await pub.send(message)
            if i % 50 == 10:
                joins.append(asyncio.create_task(join()))  # its open() subscribes mid-stream
            if i in (30, 120, 210):
                await leavers[(i - 30) // 90].send("leave")
            if i % 10 == 0:
                await asyncio.sleep(0)  # let the server run mid-stream: the interleaving under test
        joiners = await asyncio.wait_for(asyncio.gather(*joins), TIMEOUT)
        joiner_reads = [asyncio.create_task(recv_until(c, "end")) for c in joiners]
        await pub.send("end")

        for got in await asyncio.wait_for(asyncio.gather(*steady_reads), TIMEOUT):
            assert got == expected
        for got in await asyncio.wait_for(asyncio.gather(*leaver_reads), TIMEOUT):
            assert got == expected[: len(got)]  # everything up to leaving, nothing after
        for got in await asyncio.wait_for(asyncio.gather(*joiner_reads), TIMEOUT):
            assert got == expected[len(expected) - len(got) :]  # everything since joining
        assert app.subscriber_count("feed") == 3 + len(joiners)
        await synced(app, pub, *steady, *leavers, *joiners)
    assert harpy_errors(caplog) == []


async def test_a_subscriber_dropping_mid_stream_does_not_disturb_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    app = harpy.App()
    conns: Conns = {}
    closed: list[tuple[str, int]] = []
    register(app, "/pub", conns, message=lambda ws, m: app.publish("feed", m))
    register(app, "/sub", conns, closed=closed)
    expected = [f"m{i}" for i in range(400)]
    names = ["s1", "s2", "s3", "s4", "s5", "quitter"]
    async with (
        serve(app) as url,
        clients(url, "/sub", *names) as subs,
        clients(url, "/pub", "p") as (pub,),
    ):
        for name in names:
            conns[name].subscribe("feed")
        *steady, quitter = subs
        reads = [asyncio.create_task(recv_n(c, len(expected))) for c in steady]

        async def quit_abruptly() -> None:
            await recv_n(quitter, 20)
            assert quitter.transport is not None
            quitter.transport.abort()  # no close frame: the TCP connection just goes

        quitting = asyncio.create_task(quit_abruptly())
        for i, message in enumerate(expected):
            await pub.send(message)
            if i % 10 == 0:
                await asyncio.sleep(0)  # let the server run mid-stream: the interleaving under test
        await asyncio.wait_for(quitting, TIMEOUT)
        for got in await asyncio.wait_for(asyncio.gather(*reads), TIMEOUT):
            assert got == expected
        await eventually(lambda: ("quitter", 1006) in closed)
        assert app.publish("feed", "after") == 5
        assert app.subscriber_count("feed") == 5
        for c in steady:
            assert await recv(c) == "after"
    assert harpy_errors(caplog) == []


# --------------------------------------------------------------------------------- rooms


async def test_join_and_leave_report_changes_and_rooms_are_read_only() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/t", conns)
    async with serve(app) as url, clients(url, "/t", "a", "b"):
        a, b = conns["a"], conns["b"]
        assert a.rooms == frozenset()
        assert a.join("red") is True
        assert a.join("red") is False
        assert a.join("blue") is True
        assert b.join("red") is True
        assert a.in_room("red") and a.in_room("blue") and not b.in_room("blue")
        rooms = a.rooms
        assert isinstance(rooms, frozenset)
        assert rooms == {"red", "blue"}
        with pytest.raises(AttributeError):
            rooms.add("green")  # type: ignore[attr-defined]
        with pytest.raises(AttributeError):
            a.rooms = frozenset({"green"})  # type: ignore[misc]
        assert sorted(app.rooms) == ["blue", "red"]
        assert app.room_members("red") == [a, b]  # in joining order

        assert a.leave("red") is True
        assert a.leave("red") is False
        assert a.leave("never") is False
        assert not a.in_room("red")
        assert rooms == {"red", "blue"}  # the earlier snapshot did not change
        assert a.rooms == {"blue"}
        assert app.room_members("red") == [b]
        a.leave("blue")
        assert app.rooms == ["red"]
        with pytest.raises(harpy.ConfigurationError):
            a.join("")


async def test_default_room_is_joined_on_open_and_left_on_close() -> None:
    app = harpy.App()
    conns: Conns = {}
    closed: list[tuple[str, int]] = []
    seen_in_open: list[frozenset[str]] = []

    def open_(ws: harpy.WebSocket[Any]) -> None:
        conns[ws.query["name"]] = ws
        seen_in_open.append(ws.rooms)

    app.ws(
        "/game",
        {"open": open_, "close": lambda ws, c, r: closed.append((ws.query["name"], c))},
        default_room="lobby",
    )
    register(app, "/other", conns)
    async with (
        serve(app) as url,
        clients(url, "/game", "g1", "g2") as (g1, g2),
        clients(url, "/other", "o") as (o,),
    ):
        assert seen_in_open == [frozenset({"lobby"})] * 2  # already in it when open() runs
        assert app.room_members("lobby") == [conns["g1"], conns["g2"]]
        assert conns["o"].rooms == frozenset()
        assert conns["g1"].broadcast("lobby news", rooms=["lobby"]) == 1
        assert await recv(g2) == "lobby news"
        await synced(app, g1, g2, o)
        assert conns["g2"].leave("lobby") is True
        await g1.close()
        await eventually(lambda: ("g1", 1000) in closed)
        assert app.rooms == []


async def test_broadcast_to_rooms_reaches_each_member_once() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/t", conns)
    names = ("a", "b", "c", "d", "e")
    async with serve(app) as url, clients(url, "/t", *names) as cs:
        a, b, c, d, _ = cs
        memberships = {"a": ["r1", "r2"], "b": ["r1"], "c": ["r2"], "d": ["r1", "r2", "r3"]}
        for name, rooms in memberships.items():
            for room in rooms:
                conns[name].join(room)
        sender = conns["a"]

        assert sender.broadcast("both", rooms=["r1", "r2"]) == 3  # b, c, d; not a
        for client in (b, c, d):
            assert await recv(client) == "both"
        await synced(app, *cs)  # d got it once; a and e not at all

        assert sender.broadcast("with me", rooms=("r1", "r2"), include_self=True) == 4
        for client in (a, b, c, d):
            assert await recv(client) == "with me"
        await synced(app, *cs)

        assert sender.broadcast("twice named", rooms=["r1", "r1"]) == 2
        assert await recv(b) == "twice named"
        assert await recv(d) == "twice named"
        await synced(app, *cs)

        # A sender outside the rooms reaches their members; unknown or empty room lists nobody.
        assert conns["e"].broadcast({"type": "note"}, rooms=["r3", "nowhere"]) == 1
        assert json.loads(await recv(d)) == {"type": "note"}
        # include_self adds the sender only where it is a member.
        assert conns["e"].broadcast("not for e", rooms=["r3"], include_self=True) == 1
        assert await recv(d) == "not for e"
        assert conns["e"].broadcast("nobody", rooms=[]) == 0
        assert conns["e"].broadcast("nobody", rooms=["nowhere"]) == 0
        await synced(app, *cs)


async def test_broadcast_without_rooms_reaches_the_senders_route_only() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/a", conns, message=lambda ws, m: ws.broadcast(m))
    register(app, "/b", conns)
    async with (
        serve(app) as url,
        clients(url, "/a", "a1", "a2", "a3") as (a1, a2, a3),
        clients(url, "/b", "b1", "b2") as (b1, b2),
    ):
        assert conns["a1"].broadcast("route news") == 2
        assert await recv(a2) == "route news"
        assert await recv(a3) == "route news"
        await synced(app, a1, a2, a3, b1, b2)
        assert conns["a1"].broadcast("me too", include_self=True) == 3
        assert [await recv(a1), await recv(a2), await recv(a3)] == ["me too"] * 3
        await synced(app, a1, a2, a3, b1, b2)
        await a2.send("from a2")  # the handler broadcasts it
        assert await recv(a1) == "from a2"
        assert await recv(a3) == "from a2"
        await synced(app, a1, a2, a3, b1, b2)
        assert conns["b1"].broadcast(b"\x01bin") == 1
        assert await recv(b2) == b"\x01bin"
        await synced(app, a1, a2, a3, b1, b2)


async def test_app_broadcast_by_rooms_route_or_to_everyone() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/a", conns)
    register(app, "/b", conns)
    async with (
        serve(app) as url,
        clients(url, "/a", "a1", "a2") as (a1, a2),
        clients(url, "/b", "b1", "b2") as (b1, b2),
    ):
        everyone = (a1, a2, b1, b2)
        conns["a1"].join("red")
        conns["b1"].join("red")
        conns["b1"].join("blue")
        conns["b2"].join("blue")

        assert app.broadcast({"to": "all"}) == 4
        for client in everyone:
            assert json.loads(await recv(client)) == {"to": "all"}
        assert app.broadcast("rooms", rooms=["red", "blue"]) == 3
        for client in (a1, b1, b2):
            assert await recv(client) == "rooms"
        await synced(app, *everyone)
        assert app.broadcast("route a", route="/a") == 2
        assert [await recv(a1), await recv(a2)] == ["route a"] * 2
        await synced(app, *everyone)
        assert app.broadcast("red on b", rooms=["red"], route="/b") == 1
        assert await recv(b1) == "red on b"
        await synced(app, *everyone)
        assert app.broadcast("no such route", route="/nowhere") == 0
        assert app.broadcast("no such room", rooms=["green"]) == 0
        await synced(app, *everyone)


async def test_rooms_given_as_one_string_are_refused() -> None:
    app = harpy.App()
    conns: Conns = {}
    register(app, "/t", conns)
    async with serve(app) as url, clients(url, "/t", "a", "b") as cs:
        conns["a"].join("general")
        conns["b"].join("general")
        with pytest.raises(TypeError):
            conns["a"].broadcast("x", rooms="general")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            app.broadcast("x", rooms="general")  # type: ignore[arg-type]
        await synced(app, *cs)  # nothing was sent


async def test_join_and_subscribe_on_a_closed_connection_raise_invalid_state() -> None:
    app = harpy.App()
    conns: Conns = {}
    in_close: list[Any] = []

    def close(ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        # Its rooms are still readable here, but it is no longer a member anywhere.
        in_close.append(ws.rooms)
        in_close.append(ws in app.room_members("red"))
        try:
            ws.join("blue")
        except harpy.InvalidState as exc:
            in_close.append(type(exc))

    app.ws("/t", {"open": lambda ws: conns.setdefault("a", ws), "close": close})
    async with serve(app) as url, clients(url, "/t", "a") as (a,):
        ws = conns["a"]
        ws.join("red")
        ws.subscribe("news")
        await a.close()
        await eventually(lambda: len(in_close) == 3)
        assert in_close == [frozenset({"red"}), False, harpy.InvalidState]
        assert ws.ready_state == harpy.ReadyState.CLOSED
        with pytest.raises(harpy.InvalidState):
            ws.join("red")
        with pytest.raises(harpy.InvalidState):
            ws.subscribe("news")
        assert app.rooms == []
        assert app.topics == []


# --------------------------------------------------------------------------------- auto_broadcast


def recorder(seen: list[str | bytes]) -> MessageFn:
    """A message handler that only records, as in Harpia's ``/room`` example."""

    def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        seen.append(message)

    return message


async def test_auto_broadcast_resends_each_message_to_every_other_connection() -> None:
    seen: list[str | bytes] = []
    app = harpy.App(auto_broadcast=True)
    app.ws("/room", {"message": recorder(seen)})
    async with serve(app) as url, clients(url, "/room", "a", "b", "c") as (a, b, c):
        await a.send("hi")
        assert await recv(b) == "hi"
        assert await recv(c) == "hi"
        await b.send(b"\x00\x01binary")
        assert await recv(a) == b"\x00\x01binary"
        assert await recv(c) == b"\x00\x01binary"
        await synced(app, a, b, c)  # never back to the sender
        assert seen == ["hi", b"\x00\x01binary"]  # the handler still saw every message


async def test_auto_broadcast_is_off_by_default() -> None:
    seen: list[str | bytes] = []
    app = harpy.App()
    app.ws("/room", {"message": recorder(seen)})
    async with serve(app) as url, clients(url, "/room", "a", "b", "c") as (a, b, c):
        await a.send("hi")
        await a.send(b"bin")
        await eventually(lambda: len(seen) == 2)
        await synced(app, a, b, c)


async def test_auto_broadcast_reaches_every_route_of_the_server() -> None:
    seen: list[str | bytes] = []
    app = harpy.App(auto_broadcast=True)
    app.ws("/room", {"message": recorder(seen)})
    app.ws("/elsewhere", {"message": recorder(seen)})
    async with (
        serve(app) as url,
        clients(url, "/room", "a", "b") as (a, b),
        clients(url, "/elsewhere", "x") as (x,),
    ):
        await a.send("hi")
        assert await recv(b) == "hi"
        assert await recv(x) == "hi"  # as Harpia: every active connection of the server
        await x.send("back")
        assert await recv(a) == "back"
        assert await recv(b) == "back"
        await synced(app, a, b, x)


async def test_auto_broadcast_per_route() -> None:
    seen: list[str | bytes] = []
    app = harpy.App()
    app.ws("/loud", {"message": recorder(seen)}, auto_broadcast=True)
    app.ws("/quiet", {"message": recorder(seen)})
    async with (
        serve(app) as url,
        clients(url, "/loud", "a", "b") as (a, b),
        clients(url, "/quiet", "q1", "q2") as (q1, q2),
    ):
        await q1.send("hush")
        await eventually(lambda: seen == ["hush"])
        await synced(app, a, b, q1, q2)
        await a.send("shout")
        assert [await recv(b), await recv(q1), await recv(q2)] == ["shout"] * 3
        await synced(app, a, b, q1, q2)


async def test_auto_broadcast_waits_for_an_async_handler() -> None:
    done: list[str | bytes] = []

    async def message(ws: harpy.WebSocket[Any], m: str | bytes) -> None:
        await asyncio.sleep(0.01)  # a slow async handler: the case under test
        done.append(m)

    app = harpy.App(auto_broadcast=True)
    app.ws("/room", {"message": message})
    async with serve(app) as url, clients(url, "/room", "a", "b") as (a, b):
        for m in ("1", "2", "3"):
            await a.send(m)
        for m in ("1", "2", "3"):
            assert await recv(b) == m
            assert m in done  # resent only once the handler finished with it
        await synced(app, a, b)


async def test_auto_broadcast_skips_a_message_whose_handler_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain or an async handler that raises: the sender is closed with 1011 and the message
    is not resent, either way."""
    caplog.set_level(logging.CRITICAL, logger="harpy")  # the two tracebacks are expected

    def plain(ws: harpy.WebSocket[Any], m: str | bytes) -> None:
        raise RuntimeError("refused")

    async def coroutine(ws: harpy.WebSocket[Any], m: str | bytes) -> None:
        await asyncio.sleep(0)  # suspends once, then fails: the case under test
        raise RuntimeError("refused")

    app = harpy.App(auto_broadcast=True)
    app.ws("/plain", {"message": plain})
    app.ws("/async", {"message": coroutine})
    app.ws("/listen", {})
    async with (
        serve(app) as url,
        clients(url, "/listen", "l") as (listener,),
        clients(url, "/plain", "p") as (p,),
        clients(url, "/async", "q") as (q,),
    ):
        for sender in (p, q):
            await sender.send("bad input")
            await asyncio.wait_for(sender.wait_closed(), TIMEOUT)
            assert sender.close_code == 1011
            await synced(app, listener)


async def test_auto_broadcast_without_a_message_handler() -> None:
    """The option resends every received message; a route need not handle messages itself."""
    app = harpy.App()
    app.ws("/room", {"open": lambda ws: None}, auto_broadcast=True)
    async with serve(app) as url, clients(url, "/room", "a", "b") as (a, b):
        await a.send("hi")
        pong = await a.ping()  # answered only once the server has handled "hi"
        await asyncio.wait_for(pong, TIMEOUT)
        app.broadcast(SYNC)
        assert await recv(b) == "hi"
        assert await recv(b) == SYNC
        assert await recv(a) == SYNC


# --------------------------------------------------------------------------------- slow consumers


def shrink_send_buffer(ws: harpy.WebSocket[Any]) -> None:
    """Keep the kernel from absorbing megabytes for a reader that never reads (loopback)."""
    transport = ws._conn.transport  # the server's own socket, below the user API
    assert transport is not None
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def slow_consumer_app(conns: Conns, closed: list[tuple[str, int]], **options: Any) -> harpy.App:
    app = harpy.App()

    def open_(ws: harpy.WebSocket[Any]) -> None:
        name = ws.query["name"]
        conns[name] = ws
        if name == "slow":
            shrink_send_buffer(ws)
        ws.subscribe("feed")

    def close(ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        closed.append((ws.query["name"], code))

    app.ws(
        "/feed",
        {"open": open_, "close": close},
        backpressure_limit=256 * KiB,
        write_high_water=64 * KiB,
        write_low_water=16 * KiB,
        **options,
    )
    return app


async def publish_paced(
    app: harpy.App, payloads: Sequence[bytes], fast: list[harpy.WebSocket[Any]]
) -> list[int]:
    """Publish in batches of 64 KiB, letting the fast readers catch up in between, as a
    publisher that watches ``buffered_amount`` would; return each publish's count."""
    counts = []
    for i, payload in enumerate(payloads):
        counts.append(app.publish("feed", payload))
        if i % 16 == 15:
            await eventually(
                lambda: all(ws.buffered_amount <= 64 * KiB for ws in fast), interval=0.002
            )
    return counts


async def test_a_slow_consumer_loses_messages_and_the_fast_ones_lose_none() -> None:
    conns: Conns = {}
    closed: list[tuple[str, int]] = []
    app = slow_consumer_app(conns, closed)
    payloads = [i.to_bytes(4, "big") + bytes(4 * KiB - 4) for i in range(2000)]
    fast_names = [f"fast{i}" for i in range(5)]
    async with serve(app) as url, clients(url, "/feed", *fast_names) as fast_clients:
        slow_client = await RawClient.connect(url, receive_buffer=4096)
        try:
            assert await slow_client.upgrade("/feed?name=slow") == 101
            await eventually(lambda: "slow" in conns)
            slow = conns["slow"]
            fast = [conns[name] for name in fast_names]
            reads = [asyncio.create_task(recv_n(c, len(payloads))) for c in fast_clients]
            counts = await publish_paced(app, payloads, fast)
            for got in await asyncio.wait_for(asyncio.gather(*reads), TIMEOUT):
                assert got == payloads  # every one, in order
            assert slow.dropped > 0
            assert app.dropped == slow.dropped
            assert all(ws.dropped == 0 for ws in fast)
            assert sum(counts) == 5 * len(payloads) + len(payloads) - slow.dropped
            assert slow.ready_state == harpy.ReadyState.OPEN  # dropped to, not closed
            assert slow.buffered_amount <= 256 * KiB
            assert closed == []
        finally:
            await slow_client.close()
    assert app.dropped == slow.dropped  # still counted once the server stopped
    assert app.topics == []


async def test_close_on_backpressure_limit_closes_the_slow_consumer_with_1008() -> None:
    conns: Conns = {}
    closed: list[tuple[str, int]] = []
    # close_timeout bounds the wait for the client's answer to the close: scaled.
    app = slow_consumer_app(
        conns, closed, close_on_backpressure_limit=True, close_timeout=scaled(2.0)
    )
    payloads = [i.to_bytes(4, "big") + bytes(4 * KiB - 4) for i in range(1000)]
    fast_names = [f"fast{i}" for i in range(5)]
    async with serve(app) as url, clients(url, "/feed", *fast_names) as fast_clients:
        slow_client = await RawClient.connect(url, receive_buffer=4096)
        try:
            assert await slow_client.upgrade("/feed?name=slow") == 101
            await eventually(lambda: "slow" in conns)
            slow = conns["slow"]
            fast = [conns[name] for name in fast_names]
            reads = [asyncio.create_task(recv_n(c, len(payloads))) for c in fast_clients]
            counts = await publish_paced(app, payloads, fast)
            for got in await asyncio.wait_for(asyncio.gather(*reads), TIMEOUT):
                assert got == payloads
            assert slow.ready_state == harpy.ReadyState.CLOSING
            assert counts[-1] == 5  # it is no longer sent anything
            assert app.subscriber_count("feed") == 6  # until the close completes
            assert all(ws.dropped == 0 for ws in fast)
            # The client finds the close frame (1008) behind what was queued, and answers it.
            assert await slow_client.read_close() == 1008
            slow_client.send_frame(0x8, (1008).to_bytes(2, "big"))
            await eventually(lambda: ("slow", 1008) in closed)
            assert app.subscriber_count("feed") == 5
            assert [name for name, _ in closed] == ["slow"]
            assert app.publish("feed", b"after") == 5
            for client in fast_clients:
                assert await recv(client) == b"after"
        finally:
            await slow_client.close()


async def test_backpressure_limit_bounds_a_burst_published_in_one_tick() -> None:
    """Frames queued for a connection count against its limit even before the tick's flush."""
    conns: Conns = {}
    closed: list[tuple[str, int]] = []
    app = slow_consumer_app(conns, closed)
    async with serve(app) as url:
        slow_client = await RawClient.connect(url, receive_buffer=4096)
        try:
            assert await slow_client.upgrade("/feed?name=slow") == 101
            await eventually(lambda: "slow" in conns)
            slow = conns["slow"]
            payload = bytes(4 * KiB)
            counts = [app.publish("feed", payload) for _ in range(2000)]  # one tick: 8 MB
            assert slow.buffered_amount <= 256 * KiB
            assert slow.dropped > 0
            assert sum(counts) == 2000 - slow.dropped
            await asyncio.sleep(0)  # one tick, for its flush: the bound after it is under test
            assert slow.buffered_amount <= 256 * KiB
        finally:
            await slow_client.close()


async def test_a_dropped_message_does_not_corrupt_a_compressed_stream() -> None:
    """With context takeover, a message dropped at the limit must not enter the compressor's
    history: the client inflates later messages with the history of those it did receive."""
    conns: Conns = {}
    closed: list[tuple[str, int]] = []
    app = slow_consumer_app(conns, closed, compression={"server_no_context_takeover": False})
    # Each message repeats the second half of the one before, so the compressor refers back.
    halves = [os.urandom(1024).hex() for _ in range(401)]
    messages = [halves[i] + halves[i + 1] for i in range(400)]
    async with serve(app) as url:
        slow_client = await RawClient.connect(url, receive_buffer=4096)
        try:
            extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
            assert await slow_client.upgrade("/feed?name=slow", extension) == 101
            await eventually(lambda: "slow" in conns)
            slow = conns["slow"]
            accepted = 0
            for i, message in enumerate(messages):
                accepted += app.publish("feed", message)
                if i % 10 == 9:
                    await asyncio.sleep(0)  # a flush between publishes: the case under test
            assert slow.dropped > 0
            assert accepted == len(messages) - slow.dropped
            inflater = zlib.decompressobj(-15)
            received = []
            for _ in range(accepted):
                opcode, payload = await slow_client.read_frame()
                assert opcode == 0x1
                try:
                    text = inflater.decompress(payload + b"\x00\x00\xff\xff").decode()
                except (zlib.error, UnicodeDecodeError) as exc:
                    text = f"undecodable: {exc}"
                received.append(text)
            corrupt = [i for i, text in enumerate(received) if text not in messages]
            assert corrupt == [], f"{len(corrupt)} of {accepted} messages arrived corrupt"
        finally:
            await slow_client.close()


async def test_broadcast_skips_a_connection_still_waiting_for_first_message_auth() -> None:
    """Until its first message authenticated it, a connection is not open to the app: no
    broadcast reaches it (its ``open`` has not run)."""

    class Token(harpy.FirstMessageAuth):
        timeout = scaled(5.0)  # how long the client may take to send it: a bound

        def verify(self, message: str | bytes) -> Any:
            if message != "secret":
                raise harpy.Deny(1008, "bad token")
            return "user"

    app = harpy.App()
    conns: Conns = {}

    def open_(ws: harpy.WebSocket[Any]) -> None:
        conns[ws.query["name"]] = ws
        ws.send("welcome")

    app.ws("/private", {"open": open_}, authenticate=Token())
    async with serve(app) as url, clients(url, "/private", "member", "pending") as cs:
        member, pending = cs
        await member.send("secret")
        assert await recv(member) == "welcome"
        assert app.broadcast("members only") == 1
        assert conns["member"].broadcast("route news") == 0
        assert await recv(member) == "members only"
        await pending.send("secret")
        assert await recv(pending) == "welcome"  # nothing reached it before
