"""The official centrifuge-python SDK (0.7) against a real harpy channels endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from centrifuge import ReplyError, StreamPosition

import harpy
from harpy import ConfigurationError
from harpy.channels import ChannelError, ChannelOptions, Channels, Client, MemoryHistory, Namespace
from tests.channels.conftest import SECRET, token
from tests.channels.sdk import SubEvents, make_client
from tests.helpers import ServeApp, serve
from tests.timing import TIMEOUT, eventually, scaled

OPEN = Namespace(
    history_size=100,
    history_ttl=300,
    presence=True,
    join_leave=True,
    allow_subscribe=True,
    allow_publish=True,
    allow_history=True,
    allow_presence=True,
)


class Hooks:
    """The app's hooks: plain and async functions, as routes' handlers are."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.disconnects: list[tuple[str, int]] = []

    async def subscribe(self, client: Client, channel: str, data: Any) -> Any:
        if channel.startswith("club:"):
            return client.user == "vip"
        return None  # other namespaces: their options decide

    def rpc_echo(self, client: Client, data: Any) -> Any:
        return {"echo": data, "user": client.user}

    async def rpc_fail(self, client: Client, data: Any) -> Any:
        raise ChannelError(1000, "not today")

    async def rpc_follow(self, client: Client, data: Any) -> Any:
        await client.subscribe(str(data))  # a server-side subscription, now
        return {"following": data}

    def rpc_poke(self, client: Client, data: Any) -> None:
        client.send({"poke": data})  # an asynchronous message push

    def message(self, client: Client, data: Any) -> None:
        self.messages.append(data)

    def disconnect(self, client: Client, code: int, reason: str) -> None:
        self.disconnects.append((client.user, code))


def _options(**kwargs: Any) -> ChannelOptions:
    defaults: dict[str, Any] = {
        "secret": SECRET,
        "history": MemoryHistory(),
        "namespaces": {
            "chat": OPEN,
            "news": Namespace(allow_subscribe=True, allow_publish=True),
            "club": Namespace(),
            "private": Namespace(),
        },
    }
    defaults.update(kwargs)
    return ChannelOptions(**defaults)


@contextlib.asynccontextmanager
async def channels_app(
    hooks: object = None,
    serve_with: ServeApp = serve,
    static: dict[str, str] | None = None,
    **kwargs: Any,
) -> AsyncIterator[tuple[harpy.App, Channels, str]]:
    """A harpy app with presence, the channels endpoint, and a raw route subscribing to the
    topic named in its path (and ``static`` files); yields the app, the endpoint and the
    endpoint's URL."""
    app = harpy.App(presence=True, static=static)
    handlers = Hooks() if hooks is None else hooks
    endpoint = app.channels("/connection/websocket", handlers, _options(**kwargs))

    @app.ws("/raw/:topic")
    class Raw:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            ws.subscribe(ws.params["topic"])

    async with serve_with(app) as url:
        yield app, endpoint, url + "/connection/websocket"


async def test_connect_with_a_token_then_rpc(serve_app: ServeApp) -> None:
    """Natively and under uvicorn through the ASGI adapter."""
    async with channels_app(serve_with=serve_app) as (_, endpoint, url):
        client, events = make_client(url, token=token("alice", info={"name": "Alice"}))
        await client.connect()
        connected = await events.next("connected")
        assert connected.client
        result = await client.rpc("echo", {"n": 1})
        assert result.data == {"echo": {"n": 1}, "user": "alice"}
        with pytest.raises(ReplyError) as missing:
            await client.rpc("nope", {})
        assert missing.value.code == 104
        with pytest.raises(ReplyError) as failed:
            await client.rpc("fail", {})
        assert (failed.value.code, failed.value.message) == (1000, "not today")
        assert [c.user for c in endpoint.clients()] == ["alice"]
        await client.disconnect()
        assert endpoint.errors == {104: 1, 1000: 1}


async def test_a_bad_token_stops_the_client_with_3500() -> None:
    async with channels_app() as (_, endpoint, url):
        client, events = make_client(url, token="not-a-token")
        await client.connect()
        disconnected = await events.next("disconnected")
        assert disconnected.code == 3500
        assert endpoint.errors[3500] == 1


async def test_an_expired_token_is_refreshed_at_connect_and_before_it_expires() -> None:
    fetched: list[str] = []

    async def get_token() -> str:
        fetched.append("x")
        return token("bob", ttl=2)

    async with channels_app() as (_, endpoint, url):
        client, events = make_client(url, token=token("bob", ttl=-10), get_token=get_token)
        await client.connect()
        await events.next("connected")
        assert len(fetched) == 1  # the expired token got 109, and the SDK asked for another
        assert endpoint.errors[109] == 1
        # The new token lives 2 s: the SDK refreshes it (ttl 1-2 s) on the same connection.
        await eventually(lambda: len(fetched) >= 2, what="a refresh")
        await asyncio.sleep(0.5)
        assert events.pending("disconnected") == 0 and events.pending("connecting") == 1
        assert await client.rpc("echo", 1)
        await client.disconnect()


async def test_subscribe_with_and_without_permission() -> None:
    async with channels_app() as (_, endpoint, url):
        client, _ = make_client(url, token=token("alice"))
        await client.connect()
        denied = SubEvents()
        sub = client.new_subscription("private:alice", denied)
        await sub.subscribe()
        unsubscribed = await denied.next("unsubscribed")
        assert unsubscribed.code == 103
        client.remove_subscription(sub)
        # A subscription token for the channel lets the same client in.
        allowed = SubEvents()
        sub_token = token("alice", channel="private:alice", info={"role": "owner"})
        sub = client.new_subscription("private:alice", allowed, token=sub_token)
        await sub.subscribe()
        await allowed.next("subscribed")
        # A token for another channel, and another user's, are refused.
        for name, user, for_channel in (
            ("private:bob", "alice", "private:alice"),
            ("private:x", "bob", "private:x"),
        ):
            other = SubEvents()
            bad = token(user, channel=for_channel)
            await client.new_subscription(name, other, token=bad).subscribe()
            assert (await other.next("unsubscribed")).code == 103
        # The hook decides for the club namespace.
        hooked = SubEvents()
        await client.new_subscription("club:x", hooked).subscribe()
        assert (await hooked.next("unsubscribed")).code == 103
        vip, _ = make_client(url, token=token("vip"))
        await vip.connect()
        welcome = SubEvents()
        await vip.new_subscription("club:x", welcome).subscribe()
        await welcome.next("subscribed")
        # An unknown namespace.
        lost = SubEvents()
        await client.new_subscription("nowhere:x", lost).subscribe()
        assert (await lost.next("unsubscribed")).code == 102
        assert endpoint.errors[103] == 4 and endpoint.errors[102] == 1
        await client.disconnect()
        await vip.disconnect()


async def test_publish_reaches_channel_and_raw_subscribers_and_history_keeps_it(
    serve_app: ServeApp,
) -> None:
    async with channels_app(serve_with=serve_app) as (app, endpoint, url):
        base = url.rsplit("/connection", 1)[0]
        client, _ = make_client(url, token=token("alice"))
        await client.connect()
        events = SubEvents()
        sub = client.new_subscription("chat:lobby", events)
        await sub.subscribe()
        subscribed = await events.next("subscribed")
        assert subscribed.recoverable and subscribed.positioned
        async with websockets.connect(base + "/raw/chat:lobby") as raw:
            # A channel with history is not a listener of its topic: publications go to both.
            await eventually(lambda: app.subscriber_count("chat:lobby") == 1)
            await sub.publish({"text": "hi"})
            position = await endpoint.publish("chat:lobby", {"text": "from python"})
            assert position is not None and position.offset == 2
            one = await events.next("publication")
            two = await events.next("publication")
            assert (one.pub.data, one.pub.offset) == ({"text": "hi"}, 1)
            assert one.pub.info is not None and one.pub.info.user == "alice"  # the publisher
            assert two.pub.info is None  # published by Python
            assert (two.pub.data, two.pub.offset) == ({"text": "from python"}, 2)
            # Raw subscribers of the topic get the publication's data.
            assert json.loads(await asyncio.wait_for(raw.recv(), TIMEOUT)) == {"text": "hi"}
            raw_two = json.loads(await asyncio.wait_for(raw.recv(), TIMEOUT))
            assert raw_two == {"text": "from python"}
        history = await sub.history(limit=10)
        assert [p.data for p in history.publications] == [{"text": "hi"}, {"text": "from python"}]
        assert (history.offset, history.epoch) == (2, subscribed.stream_position.epoch)
        newest = await sub.history(limit=1, reverse=True)
        assert [p.offset for p in newest.publications] == [2]
        since = await sub.history(limit=10, since=subscribed.stream_position)
        assert [p.offset for p in since.publications] == [1, 2]
        oldest = await sub.history(limit=1)
        assert [p.offset for p in oldest.publications] == [1]
        before = await sub.history(limit=5, since=StreamPosition(2, history.epoch), reverse=True)
        assert [p.offset for p in before.publications] == [1]
        top_only = await sub.history()
        assert (top_only.publications, top_only.offset) == ([], 2)
        await client.disconnect()


async def test_app_publish_reaches_the_subscribers_of_a_channel_without_history() -> None:
    async with channels_app() as (app, endpoint, url):
        client, _ = make_client(url, token=token("alice"))
        await client.connect()
        events = SubEvents()
        await client.new_subscription("news:today", events).subscribe()
        await events.next("subscribed")
        assert app.publish("news:today", {"headline": "harpy speaks Centrifuge"}) >= 1
        app.publish("news:today", "plain text")
        first = await events.next("publication")
        second = await events.next("publication")
        assert first.pub.data == {"headline": "harpy speaks Centrifuge"}
        assert second.pub.data == "plain text"
        assert first.pub.offset in (None, 0)
        # Binary data that is not UTF-8 cannot be a channel's JSON: counted, not passed on.
        app.publish("news:today", b"\xff\xfe")
        app.publish("news:today", {"after": "binary"})
        assert (await events.next("publication")).pub.data == {"after": "binary"}
        assert endpoint.skipped == 1
        await client.disconnect()


async def test_presence_and_join_leave() -> None:
    async with channels_app() as (_, _endpoint, url):
        alice, _ = make_client(url, token=token("alice", info={"name": "Alice"}))
        bob, _ = make_client(url, token=token("bob"))
        await alice.connect()
        await bob.connect()
        watch = SubEvents()
        alice_sub = alice.new_subscription("chat:room", watch, join_leave=True)
        await alice_sub.subscribe()
        await watch.next("subscribed")
        assert (await watch.next("join")).info.user == "alice"
        bob_sub = bob.new_subscription("chat:room", SubEvents())
        await bob_sub.subscribe()
        joined = await watch.next("join")
        assert joined.info.user == "bob"
        stats = await alice_sub.presence_stats()
        assert (stats.num_clients, stats.num_users) == (2, 2)
        presence = await alice_sub.presence()
        users = sorted(info.user for info in presence.clients.values())
        assert users == ["alice", "bob"]
        infos = {info.user: info.conn_info for info in presence.clients.values()}
        assert infos["alice"] == {"name": "Alice"}
        await bob.disconnect()
        left = await watch.next("leave")
        assert left.info.user == "bob"
        stats = await alice_sub.presence_stats()
        assert stats.num_clients == 1
        await alice.disconnect()


async def test_server_side_subscriptions_unsubscribe_and_disconnect() -> None:
    hooks = Hooks()
    async with channels_app(hooks) as (_, endpoint, url):
        client, events = make_client(url, token=token("carol", channels=["news:carol"]))
        await client.connect()
        await events.next("connected")
        assert (await events.next("subscribed")).channel == "news:carol"
        await endpoint.publish("news:carol", {"for": "carol"})
        publication = await events.next("publication")
        assert (publication.channel, publication.pub.data) == ("news:carol", {"for": "carol"})
        # A server-side subscription made later, by a hook.
        assert (await client.rpc("follow", "news:later")).data == {"following": "news:later"}
        assert (await events.next("subscribed")).channel == "news:later"
        await endpoint.publish("news:later", {"later": True})
        later = await events.next("publication")
        assert (later.channel, later.pub.data) == ("news:later", {"later": True})
        sub_events = SubEvents()
        await client.new_subscription("chat:x", sub_events).subscribe()
        await sub_events.next("subscribed")
        assert endpoint.unsubscribe("carol", "chat:x") == 1
        assert (await sub_events.next("unsubscribed")).code == 2000
        assert endpoint.disconnect("carol", 4500, "go away") == 1
        disconnected = await events.next("disconnected")
        assert (disconnected.code, disconnected.reason) == (4500, "go away")
        await eventually(lambda: hooks.disconnects == [("carol", 4500)])


async def test_a_lost_publication_makes_the_client_recover_it() -> None:
    """A gap in the offsets the server sees unsubscribes with 2500; the SDK resubscribes,
    recovering the missing publication from history."""
    history = MemoryHistory()
    async with channels_app(history=history) as (_, endpoint, url):
        client, _ = make_client(url, token=token("dave"))
        await client.connect()
        events = SubEvents()
        await client.new_subscription("chat:gap", events).subscribe()
        await events.next("subscribed")
        await endpoint.publish("chat:gap", {"n": 1})
        assert (await events.next("publication")).pub.offset == 1
        # Offset 2 is stored but its publication never travels (as if lost between nodes).
        await history.append("chat:gap", b'{"data":{"n":2}}', 100, 300)
        await endpoint.publish("chat:gap", {"n": 3})
        assert (await events.next("subscribing")).code == 0  # subscribe() called
        assert (await events.next("subscribing")).code == 2500
        resubscribed = await events.next("subscribed")
        assert resubscribed.recovered and resubscribed.was_recovering
        got = [(await events.next("publication")).pub for _ in range(2)]
        assert [(p.offset, p.data) for p in got] == [(2, {"n": 2}), (3, {"n": 3})]
        assert endpoint.errors[2500] == 1
        await client.disconnect()


async def test_server_pings_are_answered_and_a_silent_client_is_closed() -> None:
    # Pings every second; a pong may take 1.5 s (scaled: the SDK answers on a busy machine).
    async with channels_app(ping=1.0, pong=scaled(1.5)) as (_, _endpoint, url):
        client, events = make_client(url, token=token("eve"))
        await client.connect()
        await events.next("connected")
        await asyncio.sleep(2.5)  # two pings, answered by the SDK: still connected
        assert events.pending("disconnected") == 0 and events.pending("connecting") == 1
        await client.disconnect()
        async with websockets.connect(url) as raw:
            await raw.send(json.dumps({"id": 1, "connect": {"token": token("eve")}}))
            reply = json.loads(await asyncio.wait_for(raw.recv(), TIMEOUT))
            assert reply["connect"]["ping"] == 1 and reply["connect"]["pong"] is True
            assert await asyncio.wait_for(raw.recv(), TIMEOUT) == "{}"
            await asyncio.wait_for(raw.wait_closed(), TIMEOUT)
            assert raw.close_code == 3012


async def _exchange(url: str, frames: list[str], last_id: int) -> list[Any]:
    """Send ``frames``; what came back up to the reply to command ``last_id``."""
    async with websockets.connect(url) as raw:
        for frame in frames:
            await raw.send(frame)
        out: list[Any] = []
        for _ in range(100):
            text = await asyncio.wait_for(raw.recv(), TIMEOUT)
            out.extend(json.loads(line) for line in str(text).split("\n"))
            if out[-1].get("id") == last_id:
                return out
        raise AssertionError(f"no reply to {last_id} in {out}")


async def test_several_commands_per_frame_in_order_and_bad_ones_answered_and_counted() -> None:
    async with channels_app(max_commands=4) as (_, endpoint, url):
        connect = json.dumps({"id": 1, "connect": {"token": token("fay")}})
        frame = "\n".join(
            [
                connect,
                json.dumps({"id": 2, "subscribe": {"channel": "chat:a"}}),
                json.dumps({"id": 3, "publish": {"channel": "chat:a", "data": {"n": 1}}}),
                json.dumps({"id": 4, "frobnicate": {}}),
                json.dumps({"id": 5, "rpc": {"method": "echo"}}),
            ]
        )
        replies = await _exchange(url, [frame, json.dumps({"id": 6, "subscribe": {}})], 6)
        by_id = {r.get("id"): r for r in replies if "id" in r}
        assert by_id[1]["connect"]["client"]
        assert by_id[2]["subscribe"]["recoverable"] is True
        assert by_id[3] == {"id": 3, "publish": {}}
        assert by_id[4]["error"]["code"] == 107  # unknown command
        assert by_id[5]["error"]["code"] == 106  # the fifth command of a frame of four at most
        assert by_id[6]["error"]["code"] == 107  # subscribe without a channel
        pushes = [r for r in replies if "pub" in r.get("push", {})]
        assert pushes[0]["push"]["pub"]["data"] == {"n": 1}
        # The reply to subscribe came before the channel's first push.
        assert replies.index(by_id[2]) < replies.index(pushes[0])
        for bad in ("not json", json.dumps({"id": 1, "subscribe": {"channel": "chat:a"}})):
            async with websockets.connect(url) as raw:
                await raw.send(bad)  # garbage, or a command before connect
                await asyncio.wait_for(raw.wait_closed(), TIMEOUT)
                assert raw.close_code == 3501
        assert endpoint.errors[107] == 2 and endpoint.errors[106] == 1
        assert endpoint.errors[3501] == 2


async def test_send_reaches_the_message_hook() -> None:
    hooks = Hooks()
    async with channels_app(hooks) as (_, _endpoint, url):
        frame = "\n".join(
            [
                json.dumps({"id": 1, "connect": {"token": token("gus")}}),
                json.dumps({"send": {"data": {"typing": True}}}),
                json.dumps({"id": 2, "rpc": {"method": "echo", "data": 1}}),
            ]
        )
        await _exchange(url, [frame], 2)
        assert hooks.messages == [{"typing": True}]


async def test_memory_history_with_a_backplane_is_refused_at_startup() -> None:
    """Two processes would hand out offsets of their own for one channel."""
    app = harpy.App(backplane=harpy.MemoryBackplane("channels-refused"))
    app.channels("/c", {}, _options())
    with pytest.raises(ConfigurationError, match="MemoryHistory is one process's"):
        await app.listen("127.0.0.1", 0)
    await app.shutdown()


async def test_a_subscription_token_is_refreshed_on_the_subscription() -> None:
    asked: list[str] = []

    async def get_token(channel: str) -> str:
        asked.append(channel)
        return token("ivy", ttl=2, channel=channel)

    async with channels_app() as (_, endpoint, url):
        client, _ = make_client(url, token=token("ivy"))
        await client.connect()
        events = SubEvents()
        sub = client.new_subscription("private:ivy", events, get_token=get_token)
        await sub.subscribe()
        await events.next("subscribed")
        # Its token lives 2 s: the SDK sends sub_refresh with a new one, staying subscribed.
        await eventually(lambda: len(asked) >= 2, what="a sub_refresh")
        assert asked == ["private:ivy"] * len(asked)
        assert events.pending("unsubscribed") == 0 and events.pending("subscribing") == 1
        await endpoint.publish("private:ivy", {"still": "here"})
        assert (await events.next("publication")).pub.data == {"still": "here"}
        await client.disconnect()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ({"id": 2, "subscribe": []}, 107),
        ({"id": 2, "subscribe": {"channel": 5}}, 107),
        ({"id": 2, "subscribe": {"channel": "chat:" + "x" * 300}}, 106),
        ({"id": 2, "publish": {"channel": "chat:a"}}, 107),
        ({"id": 2, "history": {"channel": "chat:a", "limit": "ten"}}, 107),
        ({"id": 2, "history": {"channel": "news:a", "limit": 1}}, 108),
        ({"id": 2, "history": {"channel": "chat:a", "since": {"offset": 0, "epoch": "x"}}}, 112),
        ({"id": 2, "presence": {"channel": "news:a"}}, 108),
        ({"id": 2, "rpc": {"method": 7}}, 107),
        ({"id": 2, "sub_refresh": {"channel": "chat:a", "token": "t"}}, 103),
        ({"id": 2, "unsubscribe": {}}, 107),
        ({"id": 2, "connect": {}}, 3501),
        ({"id": "2", "rpc": {"method": "echo"}}, 3501),
        ({"id": -1, "rpc": {"method": "echo"}}, 3501),
        ({"rpc": {"method": "echo"}}, 3501),
        ({"id": 2, "refresh": {"token": ""}}, 3501),
        ({"send": {"data": 1}}, 3508),
    ],
)
async def test_a_bad_command_gets_the_protocol_answer_and_is_counted(
    command: dict[str, Any], expected: int
) -> None:
    async with channels_app({}) as (_, endpoint, url):
        connect = json.dumps({"id": 1, "connect": {"token": token("kim")}})
        async with websockets.connect(url) as raw:
            await raw.send(connect + "\n" + json.dumps(command))
            first = json.loads(await asyncio.wait_for(raw.recv(), TIMEOUT))
            assert first["connect"]["client"]
            if expected >= 3000:
                await asyncio.wait_for(raw.wait_closed(), TIMEOUT)
                assert raw.close_code == expected
            else:
                reply = json.loads(await asyncio.wait_for(raw.recv(), TIMEOUT))
                assert reply["id"] == 2 and reply["error"]["code"] == expected
                assert reply["error"]["message"]
                # The connection goes on.
                await raw.send(json.dumps({"id": 3, "rpc": {"method": "nope"}}))
                after = json.loads(await asyncio.wait_for(raw.recv(), TIMEOUT))
                assert after["error"]["code"] == 104
        assert endpoint.errors[expected] == 1


async def test_a_subscription_not_refreshed_in_time_is_ended_with_2501() -> None:
    async with channels_app(expired_close_delay=0.2) as (_, endpoint, url):
        frame = "\n".join(
            [
                json.dumps({"id": 1, "connect": {"token": token("lea")}}),
                json.dumps(
                    {
                        "id": 2,
                        "subscribe": {
                            "channel": "private:lea",
                            "token": token("lea", ttl=1, channel="private:lea"),
                        },
                    }
                ),
            ]
        )
        async with websockets.connect(url) as raw:
            await raw.send(frame)
            replies = [json.loads(await asyncio.wait_for(raw.recv(), TIMEOUT)) for _ in range(2)]
            assert replies[1]["subscribe"]["expires"] is True
            assert replies[1]["subscribe"]["ttl"] >= 1
            push = json.loads(await asyncio.wait_for(raw.recv(), scaled(5.0)))
            assert push == {
                "push": {
                    "channel": "private:lea",
                    "unsubscribe": {"code": 2501, "reason": "subscription expired"},
                }
            }
        assert endpoint.errors[2501] == 1


def test_options_are_checked_when_made() -> None:
    for bad in (
        {"history_size": -1},
        {"history_ttl": "1h"},
        {"presence": "yes"},
        {"allow_history": 1},
    ):
        with pytest.raises(ConfigurationError):
            Namespace(**bad)
    for wrong in ({"ping": 0}, {"max_commands": 0}, {"namespaces": {"a:b": Namespace()}}):
        with pytest.raises(ConfigurationError):
            ChannelOptions(**wrong)
    with pytest.raises(ConfigurationError, match="unknown channels hook"):
        harpy.App().channels("/c", {"subscrib": lambda client, channel, data: True})
