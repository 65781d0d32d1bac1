"""The channels endpoint: the Centrifuge client protocol v2 (JSON) on a WebSocket route.

Each text frame holds commands separated by ``\\n``, handled in order (the route's async
``message`` handler runs one frame at a time); each command with an ``id`` gets one reply
line.  Hooks (plain or async) decide who connects, subscribes, publishes and what an RPC
answers; a connection JWT or a subscription JWT may decide instead (``harpy.auth.jwt``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..app import App, WebSocket
from ..auth import jwt
from ..exceptions import ConfigurationError, HarpyError
from ..protocol import OP_TEXT, Message
from ..pubsub import fan_out
from ..pubsub.history import Announce, MemoryHistory, Position, Stored
from . import _codes as codes
from ._channel import PUSH_TOPIC, Channel, Held, local_topic, push_prefix
from ._codes import ChannelError, Disconnect
from ._options import ChannelOptions, Namespace

__all__ = ["Channels", "Client"]

logger = logging.getLogger("harpy")

VERSION = "harpy"

HOOK_NAMES = ("connect", "subscribe", "publish", "rpc", "message", "disconnect", "refresh")

_COMMANDS = (
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Sub:
    """One subscription of a client."""

    __slots__ = ("expires_at", "info", "positioned", "server_side", "timer")

    def __init__(self, positioned: bool, server_side: bool, info: Any, expires_at: float) -> None:
        self.positioned = positioned
        self.server_side = server_side
        self.info = info
        self.expires_at = expires_at
        #: Ends the subscription ``expired_close_delay`` after ``expires_at`` (0: never).
        self.timer: asyncio.TimerHandle | None = None


class Client:
    """One connection of the endpoint, as the hooks see it: ``client.user``, ``client.id``,
    ``client.info`` (the connection info), ``client.ws`` (the :class:`~harpy.WebSocket`),
    ``client.channels``; :meth:`send` a message push, :meth:`subscribe` on the server side,
    :meth:`unsubscribe`, :meth:`disconnect`."""

    __slots__ = (
        "_endpoint",
        "_expires_at",
        "_expiry_timer",
        "_ping_timer",
        "_pong_timer",
        "_stale_timer",
        "_subs",
        "connected",
        "failed",
        "id",
        "info",
        "meta",
        "user",
        "ws",
    )

    def __init__(self, endpoint: Channels, ws: WebSocket[Any]) -> None:
        self._endpoint = endpoint
        self.ws = ws
        """The connection (a :class:`~harpy.WebSocket`)."""
        self.id = str(uuid.uuid4())
        """The client id its SDK is given (a UUID)."""
        self.user = ""
        """The user (the token's ``sub``; ``""``: anonymous)."""
        self.info: Any = None
        """The connection info (``info`` of the token or the hook): others see it."""
        self.meta: Any = None
        """The token's or the hook's ``meta``: for the server only."""
        self.connected = False
        """Whether ``connect`` succeeded."""
        self.failed = False
        """Whether the connection is being closed, or its ``connect`` failed."""
        self._subs: dict[str, _Sub] = {}
        self._expires_at = 0.0
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._stale_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None

    @property
    def channels(self) -> list[str]:
        """The channels this client is subscribed to, sorted."""
        return sorted(self._subs)

    def send(self, data: Any) -> None:
        """An asynchronous message to this client (its SDK's ``message`` event)."""
        self.write({"push": {"message": {"data": data}}})

    async def subscribe(self, channel: str) -> None:
        """Subscribe this client to ``channel`` on the server side (a subscribe push)."""
        await self._endpoint.subscribe_server_side(self, channel)

    def unsubscribe(
        self, channel: str, code: int = 2000, reason: str = "server unsubscribe"
    ) -> bool:
        """End this client's subscription to ``channel`` (codes from 2500 make it resubscribe)."""
        return self._endpoint.unsubscribe_client(self, channel, code, reason)

    def disconnect(self, code: int = 3503, reason: str = "force disconnect") -> None:
        """Close the connection with a protocol code (3500-3999, 4500-4999: no reconnect)."""
        self._endpoint.close_client(self, Disconnect(code, reason))

    def write(self, reply: Mapping[str, Any] | str) -> None:
        """Send one line of the protocol (a reply or a push) as it is."""
        text = reply if isinstance(reply, str) else _dumps(reply)
        self.ws.send_text(text)

    def __repr__(self) -> str:
        return f"<Client {self.id} user={self.user!r}>"


class Channels:
    """The endpoint of ``app.channels(path, handlers, options)``: its routes' handlers, the
    channels of this node, and what Python calls (:meth:`publish`, :meth:`clients`)."""

    def __init__(
        self, app: App, path: str, handlers: object = None, options: ChannelOptions | None = None
    ) -> None:
        if options is None:
            options = ChannelOptions()
        if not isinstance(options, ChannelOptions):
            raise ConfigurationError(f"channels options must be ChannelOptions, not {options!r}")
        self.app = app
        """The app whose route this is."""
        self.path = path
        """The route's path."""
        self.options = options
        """The endpoint's options."""
        uses = [n for n in options.all_namespaces() if options.keeps_history(n)]
        self.history = options.history
        """Where the channels' publications are kept (None: no namespace keeps history).  Not
        named in the options: in memory on one process, or the app's
        :attr:`~harpy.App.channel_history` (``--workers``: JetStream), chosen at start-up."""
        if self.history is None and uses:
            self.history = MemoryHistory()  # one process's, unless start-up finds a backplane
        self.hooks = _resolve_hooks(handlers)
        """The hooks by name (``rpc_methods``: the RPC methods by name)."""
        self._strict: Any = None
        self._lenient: Any = None
        if options.secret is not None or options.public_key is not None:
            common: dict[str, Any] = {
                "secret": options.secret,
                "public_key": options.public_key,
                "algorithms": list(options.algorithms),
                "audience": options.audience,
                "issuer": options.issuer,
                "require": (),
            }
            self._strict = jwt(**common)
            # The same keys with an endless leeway: tells an expired token from a bad one.
            self._lenient = jwt(**common, leeway=10**10)
        self._channels: dict[str, Channel] = {}
        self._clients: dict[WebSocket[Any], Client] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.errors: dict[int, int] = {}
        """Error replies and disconnects sent, by code: what clients got wrong, or were denied."""
        self.skipped = 0
        """Raw topic messages not passed to a channel's subscribers (binary, not UTF-8)."""
        self._uses = bool(uses)
        if self.history is not None:
            app.on_startup(self._start_history)
            app.on_shutdown(self._stop_history)

    async def _start_history(self) -> None:
        """Choose the history not named in the options (beside a backplane, the app's, which
        ``--workers`` sets; else an error saying what to do), refuse memory beside a backplane,
        and start it."""
        backplane = self.app.backplane
        if self.options.history is None and backplane is not None:
            offered = self.app.channel_history
            if offered is None:
                raise ConfigurationError(
                    f"channels at {self.path!r} keep history, which every process must share "
                    f"beside a backplane ({type(backplane).__name__}): give ChannelOptions("
                    "history=RedisHistory(url)) or ChannelOptions(history=JetStreamHistory(url)). "
                    "Under --workers (no backplane of the app's own) JetStream on the embedded "
                    "nats-server keeps it, unless HARPY_EMBEDDED_JETSTREAM=0 turned JetStream "
                    "off: remove that, or give a history"
                )
            self.history = offered
        history = self.history
        assert history is not None
        if self._uses and isinstance(history, MemoryHistory) and backplane is not None:
            raise ConfigurationError(
                "MemoryHistory is one process's: with a backplane (or --workers) give the "
                "channels a shared history (RedisHistory, JetStreamHistory)"
            )
        await history.start()

    async def _stop_history(self) -> None:
        if self.history is not None:
            await self.history.stop()

    # ----------------------------------------------------------------- Python's side

    def clients(self, user: str | None = None) -> list[Client]:
        """The connected clients on this node (of ``user`` only, if given)."""
        return [
            c for c in self._clients.values() if c.connected and (user is None or c.user == user)
        ]

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        tags: Mapping[str, str] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> Position | None:
        """Publish ``data`` (JSON) to ``channel``: its subscribers on every node get the
        publication push, raw subscribers of topic ``channel`` get ``data``.  Returns the
        publication's position in history (None: the channel keeps none).

        ``tags`` and ``info`` (the publisher's client info: a client's publications carry it)
        go in the publications of channels with history."""
        namespace = self.options.namespace(channel)
        if namespace is None:
            raise HarpyError(f"channel {channel!r} is in no namespace")
        payload = self.app.encode_json(data)
        if b"\n" in payload:
            payload = _dumps(json.loads(payload)).encode()
        hub = self.app.hub
        raw = Message(OP_TEXT, payload)
        if not self.options.keeps_history(namespace):
            hub.publish(channel, raw)  # a channel without history listens to its topic
            return None
        history = self.history
        assert history is not None
        body = b'{"data":' + payload
        if tags:
            body += b',"tags":' + _dumps(dict(tags)).encode()
        if info:
            body += b',"info":' + _dumps(dict(info)).encode()
        body += b"}"
        head = push_prefix(channel) + body[:-1] + b',"offset":'
        middle, tail = b',"epoch":"', b'"}}}'
        topic = PUSH_TOPIC + channel
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        async with lock:  # this node's publications of a channel leave in offset order
            announce = None
            if history.shares(hub.backplane):
                # Taken under the lock: the envelopes' sequence follows the appends' order.
                envelope = hub.topic_envelope(topic, OP_TEXT)
                if envelope is not None:
                    announce = Announce(envelope[0], envelope[1] + head, middle, tail)
            position = await history.append(
                channel, body, namespace.history_size, namespace.history_ttl, announce
            )
            push = Message(
                OP_TEXT,
                b"".join((head, b"%d" % position.offset, middle, position.epoch.encode(), tail)),
            )
            if announce is not None:
                fan_out(hub.topics.receivers(topic), push)
            else:
                hub.publish(topic, push)
        if len(self._locks) > 1024 and not lock.locked():
            self._locks.pop(channel, None)
        hub.publish(channel, raw)
        return position

    def unsubscribe(self, user: str, channel: str) -> int:
        """End ``user``'s subscriptions to ``channel`` on this node; how many ended."""
        return sum(c.unsubscribe(channel) for c in self.clients(user))

    def disconnect(self, user: str, code: int = 3503, reason: str = "force disconnect") -> int:
        """Close ``user``'s connections on this node; how many."""
        found = self.clients(user)
        for client in found:
            client.disconnect(code, reason)
        return len(found)

    # ----------------------------------------------------------------- the route

    def route_handlers(self) -> dict[str, Callable[..., Any]]:
        """The handlers of the endpoint's route (``app.channels`` registers them)."""
        return {"open": self._open, "message": self._message, "close": self._close}

    def _open(self, ws: WebSocket[Any]) -> None:
        client = self._clients[ws] = Client(self, ws)
        loop = asyncio.get_running_loop()
        client._stale_timer = loop.call_later(  # noqa: SLF001 - the endpoint owns its clients
            self.options.stale, self._stale, client
        )

    def _stale(self, client: Client) -> None:
        if not client.connected:
            self.close_client(client, codes.STALE)

    async def _message(self, ws: WebSocket[Any], frame: str | bytes) -> None:
        client = self._clients.get(ws)
        if client is None:
            return
        if isinstance(frame, bytes):
            self.close_client(client, codes.BAD_REQUEST_CLOSE)
            return
        lines = [line for line in frame.strip().split("\n") if line.strip()]
        for index, line in enumerate(lines):
            if client.failed or ws.ready_state != 1:
                return
            try:
                command = json.loads(line)
            except ValueError:
                command = None
            if not isinstance(command, dict):
                self.close_client(client, codes.BAD_REQUEST_CLOSE)
                return
            if index >= self.options.max_commands:
                self._fail(client, command, codes.LIMIT_EXCEEDED)
                continue
            await self._command(client, command)

    async def _command(self, client: Client, command: dict[str, Any]) -> None:
        cid = command.get("id", 0)
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
            self.close_client(client, codes.BAD_REQUEST_CLOSE)
            return
        kind = next((k for k in _COMMANDS if command.get(k) is not None), None)
        if cid == 0 and kind != "send":
            if kind is None:
                self._pong(client)
            else:
                self.close_client(client, codes.BAD_REQUEST_CLOSE)
            return
        if kind is None:
            self._fail(client, command, codes.BAD_REQUEST)
            return
        request = command[kind]
        if not isinstance(request, dict):
            self._fail(client, command, codes.BAD_REQUEST)
            return
        if not client.connected and kind != "connect":
            self.close_client(client, codes.BAD_REQUEST_CLOSE)
            return
        try:
            after: list[Callable[[], None]] = []
            result = await getattr(self, "_cmd_" + kind)(client, request, after)
        except ChannelError as exc:
            self._fail(client, command, exc)
            if kind == "connect":
                client.failed = True
            return
        except Disconnect as exc:
            self.close_client(client, exc)
            return
        except Exception:
            logger.exception("harpy: channels command %r failed", kind)
            self._fail(client, command, codes.INTERNAL)
            return
        if kind == "send" or result is None:
            return
        if isinstance(result, str):
            client.write(f'{{"id":{cid},"{kind}":{result}}}')
        else:
            client.write({"id": cid, kind: result})
        for fn in after:  # what must follow the reply (a subscription's first pushes)
            fn()

    def _fail(self, client: Client, command: Mapping[str, Any], error: ChannelError) -> None:
        self.errors[error.code] = self.errors.get(error.code, 0) + 1
        cid = command.get("id")
        if isinstance(cid, int) and not isinstance(cid, bool) and cid > 0:
            client.write({"id": cid, "error": error.reply()})

    def close_client(self, client: Client, disconnect: Disconnect) -> None:
        """Close ``client`` with a protocol disconnect code (counted)."""
        self.errors[disconnect.code] = self.errors.get(disconnect.code, 0) + 1
        client.failed = True
        if client.ws.ready_state == 1:
            client.ws.close(disconnect.code, disconnect.reason[:120])

    async def _close(self, ws: WebSocket[Any], code: int, reason: str) -> None:
        client = self._clients.pop(ws, None)
        if client is None:
            return
        for timer in (
            client._ping_timer,  # noqa: SLF001 - the endpoint owns its clients
            client._pong_timer,  # noqa: SLF001
            client._stale_timer,  # noqa: SLF001
            client._expiry_timer,  # noqa: SLF001
        ):
            if timer is not None:
                timer.cancel()
        subs = client._subs  # noqa: SLF001
        channels = list(subs)
        for sub in subs.values():
            if sub.timer is not None:
                sub.timer.cancel()
        subs.clear()
        for channel in channels:
            self._left(client, channel)
        hook = self.hooks.get("disconnect")
        if hook is not None and client.connected:
            await _maybe_await(hook(client, code, reason))

    # ----------------------------------------------------------------- pings

    def _arm_ping(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        client._ping_timer = loop.call_later(  # noqa: SLF001
            self.options.ping, self._ping, client
        )

    def _ping(self, client: Client) -> None:
        if client.ws.ready_state != 1:
            return
        client.write("{}")
        if client._pong_timer is None:  # noqa: SLF001
            loop = asyncio.get_running_loop()
            client._pong_timer = loop.call_later(  # noqa: SLF001
                self.options.pong, self.close_client, client, codes.NO_PONG
            )
        self._arm_ping(client)

    def _pong(self, client: Client) -> None:
        timer = client._pong_timer  # noqa: SLF001
        if timer is not None:
            timer.cancel()
            client._pong_timer = None  # noqa: SLF001

    # ----------------------------------------------------------------- tokens

    def _verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; error 109 for an expired one, 3500 for a bad one."""
        if self._strict is None:
            raise codes.INVALID_TOKEN
        try:
            claims: dict[str, Any] = self._strict.verify(token)
        except HarpyError:
            pass
        else:
            return claims
        try:
            self._lenient.verify(token)
        except HarpyError:
            raise codes.INVALID_TOKEN from None
        raise codes.TOKEN_EXPIRED

    def _expiry(self, claims: Mapping[str, Any]) -> float:
        """When the credentials of ``claims`` end (0: never): ``expire_at``, else ``exp``."""
        value = claims.get("expire_at", claims.get("exp"))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            return 0.0
        return float(value)

    def _set_expiry(self, client: Client, expires_at: float) -> dict[str, Any]:
        timer = client._expiry_timer  # noqa: SLF001
        if timer is not None:
            timer.cancel()
            client._expiry_timer = None  # noqa: SLF001
        client._expires_at = expires_at  # noqa: SLF001
        if not expires_at:
            return {}
        ttl = expires_at - time.time()
        if ttl <= 0:
            raise codes.EXPIRED
        loop = asyncio.get_running_loop()
        client._expiry_timer = loop.call_later(  # noqa: SLF001
            ttl + self.options.expired_close_delay,
            self.close_client,
            client,
            codes.CONNECTION_EXPIRED,
        )
        return {"expires": True, "ttl": max(1, int(ttl))}

    # ----------------------------------------------------------------- commands

    async def _cmd_connect(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        if client.connected:
            raise codes.BAD_REQUEST_CLOSE
        token = request.get("token") or ""
        if not isinstance(token, str):
            raise codes.BAD_REQUEST
        hook = self.hooks.get("connect")
        found: Any = None
        if hook is not None:
            found = await _maybe_await(hook(client, request))
            if found is False:
                raise codes.UNAUTHORIZED
        if isinstance(found, Mapping):
            claims: Mapping[str, Any] = found
        elif token and self._strict is not None:
            claims = self._verify(token)
        elif hook is not None or self.options.anonymous or self._strict is None:
            claims = {}
        else:
            raise codes.UNAUTHORIZED
        user = claims.get("sub", claims.get("user", ""))
        if not isinstance(user, str):
            raise codes.INVALID_TOKEN
        client.user = user
        client.info = _info(claims)
        client.meta = claims.get("meta")
        result: dict[str, Any] = {"client": client.id, "version": VERSION}
        result.update(self._set_expiry(client, self._expiry(claims)))
        client.ws.presence = _client_info(client)
        client.connected = True
        stale = client._stale_timer  # noqa: SLF001
        if stale is not None:
            stale.cancel()
        result["ping"] = max(1, int(self.options.ping))
        result["pong"] = True
        self._arm_ping(client)
        if "data" in claims:
            result["data"] = claims["data"]
        channels = claims.get("channels") or []
        given = request.get("subs")
        wanted: dict[str, Any] = given if isinstance(given, dict) else {}
        if isinstance(channels, list) and channels:
            subs: dict[str, Any] = {}
            for channel in channels:
                if not isinstance(channel, str) or channel in client._subs:  # noqa: SLF001
                    continue
                one = wanted.get(channel)
                asked: dict[str, Any] = one if isinstance(one, dict) else {}
                try:
                    text = await self._subscribe(client, channel, asked, True, after)
                    subs[channel] = json.loads(text)
                except ChannelError as exc:
                    logger.warning("harpy: server-side subscription to %r: %s", channel, exc)
            if subs:
                result["subs"] = subs
        return result

    async def _cmd_refresh(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        token = request.get("token")
        if not isinstance(token, str) or not token:
            raise codes.BAD_REQUEST_CLOSE
        hook = self.hooks.get("refresh")
        found = await _maybe_await(hook(client, token)) if hook is not None else None
        if isinstance(found, Mapping):
            claims: Mapping[str, Any] = found
        else:
            try:
                claims = self._verify(token)
            except ChannelError:
                raise codes.CONNECTION_EXPIRED from None
        if claims.get("sub", claims.get("user", "")) != client.user:
            raise codes.INVALID_TOKEN
        result = {"client": client.id, "version": VERSION}
        try:
            result.update(self._set_expiry(client, self._expiry(claims)))
        except ChannelError:
            raise codes.CONNECTION_EXPIRED from None
        return result

    def _check_channel(self, request: Mapping[str, Any]) -> tuple[str, Namespace]:
        channel = request.get("channel")
        if not isinstance(channel, str) or not channel:
            raise codes.BAD_REQUEST
        if len(channel) > self.options.max_channel_length:
            raise codes.LIMIT_EXCEEDED
        namespace = self.options.namespace(channel)
        if namespace is None:
            raise codes.UNKNOWN_CHANNEL
        return channel, namespace

    async def _cmd_subscribe(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> str:
        channel, _ = self._check_channel(request)
        return await self._subscribe(client, channel, request, False, after)

    async def _permit_subscribe(
        self, client: Client, channel: str, namespace: Namespace, request: Mapping[str, Any]
    ) -> tuple[Any, float, dict[str, Any]]:
        """Whether ``client`` may subscribe: (channel info, expiry, extra result fields)."""
        token = request.get("token") or ""
        if token:
            try:
                claims = self._verify(token) if isinstance(token, str) else None
            except Disconnect:
                raise codes.PERMISSION_DENIED from None
            if (
                claims is None
                or claims.get("channel") != channel
                or claims.get("sub", "") != client.user
                or claims.get("client", client.id) != client.id
            ):
                raise codes.PERMISSION_DENIED
            expires_at = self._expiry(claims)
            extra: dict[str, Any] = {}
            if expires_at:
                ttl = expires_at - time.time()
                if ttl <= 0:
                    raise codes.EXPIRED
                extra = {"expires": True, "ttl": max(1, int(ttl))}
            if "data" in claims:
                extra["data"] = claims["data"]
            return _info(claims), expires_at, extra
        hook = self.hooks.get("subscribe")
        if hook is not None:
            answer = await _maybe_await(hook(client, channel, request.get("data")))
            if answer is False:
                raise codes.PERMISSION_DENIED
            if isinstance(answer, Mapping):
                extra = {"data": answer["data"]} if "data" in answer else {}
                return answer.get("info"), 0.0, extra
            if answer is True:
                return None, 0.0, {}
        if namespace.allow_subscribe:
            return None, 0.0, {}
        raise codes.PERMISSION_DENIED

    async def _subscribe(
        self,
        client: Client,
        channel: str,
        request: Mapping[str, Any],
        server_side: bool,
        after: list[Callable[[], None]],
    ) -> str:
        """Subscribe ``client``: the result's JSON; ``after`` gets what must follow the reply
        (the pushes held meanwhile, then joining the channel's local topic)."""
        subs = client._subs  # noqa: SLF001
        if channel in subs:
            raise codes.ALREADY_SUBSCRIBED
        if len(subs) >= self.options.max_subscriptions:
            raise codes.LIMIT_EXCEEDED
        namespace = self.options.namespace(channel)
        if namespace is None:
            raise codes.UNKNOWN_CHANNEL
        if server_side:
            info: Any = None
            expires_at: float = 0.0
            extra: dict[str, Any] = {}
        else:
            info, expires_at, extra = await self._permit_subscribe(
                client, channel, namespace, request
            )
        positioned = self.options.keeps_history(namespace)
        here = self._channel(channel, positioned)
        key = object()
        here.held[key] = []
        try:
            result, publications, reached = await self._position(here, channel, request, key)
        finally:
            held = here.held.pop(key, [])
        try:
            if client.ws.ready_state != 1 or client.failed or channel in subs:
                raise codes.ALREADY_SUBSCRIBED if channel in subs else codes.BAD_REQUEST
            if positioned and request.get("recover") and not result.get("recovered"):
                flag = request.get("flag")
                if isinstance(flag, int) and not isinstance(flag, bool) and flag & 2:
                    raise codes.UNRECOVERABLE
            if positioned and result.get("recovered"):
                # Live publications held during the read, merged by offset: no gap, no twice.
                merged = _merge(publications, held, reached)
                if merged is None:
                    raise codes.INSUFFICIENT_STATE_CLOSE
                publications = merged
                later = [m for offset, _, m in held if not offset]
            else:
                later = [m for offset, _, m in held if not offset or offset > reached]
        except BaseException:
            self._drop_if_idle(here)
            raise
        result.update(extra)
        text = _dumps(result)
        if publications:
            text = text[:-1] + ',"publications":[' + ",".join(publications) + "]}"
        subs[channel] = sub = _Sub(positioned, server_side, info, expires_at)
        self._watch_expiry(client, channel, sub)
        ws = client.ws

        def finish() -> None:
            if ws.ready_state != 1 or subs.get(channel) is None:
                self._drop_if_idle(here)
                return
            for message in later:
                ws.send_text(message.payload.decode())
            ws.subscribe(here.local)
            if namespace.join_leave:
                self.app.hub.publish(here.push, self._join_leave(channel, "join", client, info))

        after.append(finish)
        return text

    def _watch_expiry(self, client: Client, channel: str, sub: _Sub) -> None:
        """Unsubscribe with 2501 (the SDK resubscribes with a new token) a subscription not
        refreshed ``expired_close_delay`` after its token's expiry."""
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        if sub.expires_at:
            delay = sub.expires_at - time.time() + self.options.expired_close_delay
            sub.timer = asyncio.get_running_loop().call_later(
                max(0.0, delay), self._sub_expired, client, channel, sub
            )

    def _sub_expired(self, client: Client, channel: str, sub: _Sub) -> None:
        if client._subs.get(channel) is sub:  # noqa: SLF001
            self.errors[2501] = self.errors.get(2501, 0) + 1
            self.unsubscribe_client(client, channel, *codes.Unsubscribe.EXPIRED)

    async def subscribe_server_side(self, client: Client, channel: str) -> None:
        """Subscribe a connected ``client`` to ``channel`` (a subscribe push tells its SDK)."""
        if not client.connected:
            raise HarpyError("the client is not connected")
        after: list[Callable[[], None]] = []
        text = await self._subscribe(client, channel, {}, True, after)
        client.write('{"push":{"channel":' + _dumps(channel) + ',"subscribe":' + text + "}}")
        for fn in after:
            fn()

    def unsubscribe_client(self, client: Client, channel: str, code: int, reason: str) -> bool:
        """End ``client``'s subscription to ``channel`` with an unsubscribe push."""
        subs = client._subs  # noqa: SLF001
        sub = subs.pop(channel, None)
        if sub is None:
            return False
        if sub.timer is not None:
            sub.timer.cancel()
        client.ws.unsubscribe(self._local(channel))
        if client.ws.ready_state == 1:
            unsubscribe = {"code": code, "reason": reason}
            client.write({"push": {"channel": channel, "unsubscribe": unsubscribe}})
        self._left(client, channel)
        return True

    def _left(self, client: Client, channel: str) -> None:
        """``client`` is no longer subscribed to ``channel``: its leave push, and the channel
        let go when it has no local subscriber left."""
        here = self._channels.get(channel)
        namespace = self.options.namespace(channel)
        if namespace is not None and namespace.join_leave and here is not None:
            self.app.hub.publish(here.push, self._join_leave(channel, "leave", client, None))
        if here is not None:
            self._drop_if_idle(here)

    def _channel(self, name: str, positioned: bool) -> Channel:
        here = self._channels.get(name)
        if here is None:
            here = Channel(self.app.hub, name, positioned, self._on_fault, self.path)
            self._channels[name] = here
        return here

    def _local(self, channel: str) -> str:
        """The topic of this endpoint's subscribers of ``channel`` (on every node)."""
        return local_topic(self.path, channel)

    def _drop_if_idle(self, here: Channel) -> None:
        if here.idle() and self._channels.get(here.name) is here:
            del self._channels[here.name]
            here.close()

    def _on_fault(self, here: Channel, lost: bool) -> None:
        """A publication of ``here`` was lost on its way, or its epoch changed: its local
        subscribers resubscribe and recover (server-side ones reconnect).  Not ``lost``: a
        raw topic message a channel cannot carry (binary, not UTF-8), counted and logged."""
        if not lost:
            self.skipped += 1
            logger.warning("harpy: binary data on topic %r is not passed to its channel", here.name)
            return
        name = here.name
        for member in self.app.hub.topics.members(here.local):
            client = self._clients.get(member)
            if client is None:
                continue
            sub = client._subs.get(name)  # noqa: SLF001
            if sub is not None and sub.server_side:
                self.close_client(client, codes.INSUFFICIENT_STATE_CLOSE)
            else:
                self.errors[2500] = self.errors.get(2500, 0) + 1
                self.unsubscribe_client(client, name, *codes.Unsubscribe.INSUFFICIENT_STATE)

    def _join_leave(self, channel: str, kind: str, client: Client, info: Any) -> Message:
        data: dict[str, Any] = _client_info(client)
        if info is not None:
            data["chan_info"] = info
        body = {"push": {"channel": channel, kind: {"info": data}}}
        return Message(OP_TEXT, _dumps(body).encode())

    async def _position(
        self, here: Channel, channel: str, request: Mapping[str, Any], key: object
    ) -> tuple[dict[str, Any], list[str], int]:
        """The subscribe result's position fields, the recovered publications (JSON) and the
        offset they reach (the read shared with the others recovering ``here`` at once, whose
        pushes held since it began go in ``here.held[key]``)."""
        if not here.positioned:
            return {}, [], 0
        history = self.history
        assert history is not None
        result: dict[str, Any] = {"recoverable": True, "positioned": True}
        if request.get("recover") is not True:
            top = await history.top(channel)
            here.note(top)
            result.update(epoch=top.epoch, offset=top.offset)
            return result, [], top.offset
        result["was_recovering"] = True
        offset = request.get("offset", 0)
        epoch = request.get("epoch", "")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            offset = 0
        if not isinstance(epoch, str):
            epoch = ""
        stored, top = await here.since(history, offset, self.options.recovery_limit, key)
        here.note(top)
        result["epoch"] = top.epoch
        recovered = (not epoch or epoch == top.epoch) and (
            (not stored and top.offset == offset)
            or (bool(stored) and stored[0].offset == offset + 1 and stored[-1].offset == top.offset)
        )
        if not recovered:
            result["offset"] = top.offset
            return result, [], top.offset
        result.update(recovered=True, offset=offset)
        return result, [_pub(s, top.epoch) for s in stored], top.offset

    async def _cmd_unsubscribe(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        channel, _ = self._check_channel(request)
        sub = client._subs.pop(channel, None)  # noqa: SLF001
        if sub is not None:
            if sub.timer is not None:
                sub.timer.cancel()
            client.ws.unsubscribe(self._local(channel))
            self._left(client, channel)
        return {}

    async def _cmd_sub_refresh(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        channel, namespace = self._check_channel(request)
        sub = client._subs.get(channel)  # noqa: SLF001
        if sub is None:
            raise codes.PERMISSION_DENIED
        token = request.get("token")
        if not isinstance(token, str) or not token:
            raise codes.BAD_REQUEST
        try:
            _, expires_at, extra = await self._permit_subscribe(
                client, channel, namespace, {"token": token}
            )
        except ChannelError as exc:
            if exc.code == 109:
                raise
            raise codes.INVALID_TOKEN from None
        sub.expires_at = expires_at
        self._watch_expiry(client, channel, sub)
        extra.pop("data", None)
        return extra

    async def _cmd_publish(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        channel, namespace = self._check_channel(request)
        if "data" not in request:
            raise codes.BAD_REQUEST
        data = request["data"]
        hook = self.hooks.get("publish")
        answer = None if hook is None else await _maybe_await(hook(client, channel, data))
        if isinstance(answer, Mapping) and "data" in answer:
            data = answer["data"]
        elif answer is False or (answer is None and not namespace.allow_publish):
            raise codes.PERMISSION_DENIED
        await self.publish(channel, data, info=_client_info(client))
        return {}

    def _may_read(self, client: Client, channel: str, allowed: bool) -> None:
        if not allowed and channel not in client._subs:  # noqa: SLF001
            raise codes.PERMISSION_DENIED

    async def _cmd_history(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> str:
        channel, namespace = self._check_channel(request)
        history = self.history
        if history is None or not self.options.keeps_history(namespace):
            raise codes.NOT_AVAILABLE
        self._may_read(client, channel, namespace.allow_history)
        limit = request.get("limit", 0)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise codes.BAD_REQUEST
        cap = self.options.recovery_limit
        limit = cap if limit < 0 or limit > cap else limit
        since = request.get("since")
        reverse = request.get("reverse") is True
        offset = 0
        top = await history.top(channel)
        if since is not None:
            if not isinstance(since, dict):
                raise codes.BAD_REQUEST
            offset, epoch = since.get("offset", 0), since.get("epoch", "")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise codes.BAD_REQUEST
            if epoch and epoch != top.epoch:
                raise codes.UNRECOVERABLE
        # As Centrifuge: limit 0 gives only the position; forward from the oldest kept (or
        # from ``since``), reverse from the newest (or from before ``since``).
        stored: list[Stored] = []
        if limit and reverse:
            stored, top = await history.latest(channel, cap)
            stored = [s for s in stored if not offset or s.offset < offset][:limit]
        elif limit:
            stored, top = await history.since(channel, offset, limit)
        pubs = ",".join(_pub(s, top.epoch) for s in stored)
        return f'{{"publications":[{pubs}],"epoch":{_dumps(top.epoch)},"offset":{top.offset}}}'

    def _presence_of(self, client: Client, channel: str, namespace: Namespace) -> dict[str, Any]:
        presence = self.app.presence
        if not namespace.presence or presence is None:
            raise codes.NOT_AVAILABLE
        self._may_read(client, channel, namespace.allow_presence)
        found = self.app.present(topic=self._local(channel))
        return {k: v for k, v in found.items() if isinstance(v, dict) and "client" in v}

    async def _cmd_presence(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        channel, namespace = self._check_channel(request)
        found = self._presence_of(client, channel, namespace)
        return {"presence": {info["client"]: info for info in found.values()}}

    async def _cmd_presence_stats(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        channel, namespace = self._check_channel(request)
        found = self._presence_of(client, channel, namespace)
        users = {info.get("user") for info in found.values()}
        return {"num_clients": len(found), "num_users": len(users)}

    async def _cmd_ping(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        return {}

    async def _cmd_send(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> None:
        hook = self.hooks.get("message")
        if hook is None:
            raise Disconnect(3508, "not available")
        await _maybe_await(hook(client, request.get("data")))

    async def _cmd_rpc(
        self, client: Client, request: dict[str, Any], after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        method = request.get("method", "")
        if not isinstance(method, str):
            raise codes.BAD_REQUEST
        data = request.get("data")
        methods: Mapping[str, Callable[..., Any]] = self.hooks.get("rpc_methods") or {}
        fn = methods.get(method)
        if fn is not None:
            answer = await _maybe_await(fn(client, data))
        else:
            generic = self.hooks.get("rpc")
            if generic is None:
                raise codes.METHOD_NOT_FOUND
            answer = await _maybe_await(generic(client, method, data))
        return {} if answer is None else {"data": answer}


def _merge(recovered: list[str], held: list[Held], reached: int) -> list[str] | None:
    """The recovered publications, then the held ones past them by offset, each once; None
    when the held ones do not continue them without a gap."""
    out = list(recovered)
    last = reached
    for offset, _, message in sorted(held, key=lambda h: h[0]):
        if offset <= last:
            continue
        if offset != last + 1:
            return None
        payload = message.payload
        # A positioned push is {"push":{"channel":...,"pub":PUB}}: PUB ends before "}}".
        start = payload.index(b',"pub":') + 7
        out.append(payload[start:-2].decode())
        last = offset
    return out


def _pub(stored: Stored, epoch: str) -> str:
    body = stored.body.decode()
    return body[:-1] + f',"offset":{stored.offset},"epoch":{_dumps(epoch)}}}'


def _info(claims: Mapping[str, Any]) -> Any:
    """The ``info`` of claims (or ``b64info``, base64 of JSON)."""
    if "info" in claims:
        return claims["info"]
    encoded = claims.get("b64info")
    if isinstance(encoded, str):
        try:
            return json.loads(base64.b64decode(encoded))
        except (ValueError, binascii.Error):
            raise codes.INVALID_TOKEN from None
    return None


def _client_info(client: Client) -> dict[str, Any]:
    info: dict[str, Any] = {"user": client.user, "client": client.id}
    if client.info is not None:
        info["conn_info"] = client.info
    return info


def _resolve_hooks(handlers: object) -> dict[str, Any]:
    """The hooks of a mapping, a class (instantiated once) or an object: ``connect``,
    ``subscribe``, ``publish``, ``message``, ``refresh``, ``disconnect``, ``rpc`` and
    ``rpc_<method>`` (each also as ``on_<name>``)."""
    if handlers is None:
        return {}
    if inspect.isclass(handlers):
        handlers = handlers()
    if isinstance(handlers, Mapping):
        items = dict(handlers)
    else:
        items = {n: getattr(handlers, n) for n in dir(handlers) if not n.startswith("_")}
    hooks: dict[str, Any] = {}
    methods: dict[str, Callable[..., Any]] = {}
    for raw_name, fn in items.items():
        if not isinstance(raw_name, str):
            raise ConfigurationError(f"channels hook names are strings, not {raw_name!r}")
        name = raw_name[3:] if raw_name.startswith("on_") else raw_name
        if name.startswith("rpc_"):
            if not callable(fn):
                raise ConfigurationError(f"channels hook {raw_name!r} is not callable")
            methods[name[4:]] = fn
        elif name in HOOK_NAMES:
            if not callable(fn):
                raise ConfigurationError(f"channels hook {raw_name!r} is not callable")
            hooks[name] = fn
        elif isinstance(handlers, Mapping):
            raise ConfigurationError(
                f"unknown channels hook {raw_name!r}: one of {', '.join(HOOK_NAMES)}, rpc_<method>"
            )
    if not hooks and not methods and not isinstance(handlers, Mapping):
        raise ConfigurationError(f"{handlers!r} has none of the channels hooks {HOOK_NAMES}")
    hooks["rpc_methods"] = methods
    return hooks


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
