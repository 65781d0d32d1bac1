"""One channel on this node: the member of the app's topics that hands its publications to the
local subscribers, in offset order, and holds them for a subscriber being recovered.

Channel ``C`` is three harpy topics:

* ``C`` itself: what ``app.publish(C, data)`` and raw routes' ``ws.subscribe(C)`` use.  A
  channel without history listens to it, wrapping each message in a publication push (once
  per message on this node): raw subscribers get the data, channel subscribers the push.
* ``PUSH_TOPIC + C``: the pushes of the channel (publications with their offsets, join,
  leave), built once by the publisher and carried to every node by the backplane.
* ``LOCAL_TOPIC + endpoint path + C``: the connections subscribed to the channel on this node
  (their presence, across nodes, is the channel's presence).  Only this node's channel writes
  to it.

A channel with history checks each publication's offset against the last it passed on: a gap
(one was lost between nodes) or a new epoch unsubscribes the local subscribers with code 2500,
so that their SDKs resubscribe and recover from history.

Recovering subscribers share their history reads (the storm after a deploy, when thousands
resubscribe at once): one read in flight per channel and starting offset; a subscriber recovering
from an offset at or past a read in flight awaits that read and takes the part past its offset,
with the publications pushed since the read began.
"""

from __future__ import annotations

import asyncio
import json
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from ..protocol import OP_TEXT, Message
from ..pubsub import Hub, fan_out
from ..pubsub.history import History, Position, Stored

__all__ = ["LOCAL_TOPIC", "PUSH_TOPIC", "Channel", "Held", "local_topic", "push_prefix", "wrap_raw"]

#: Topic name prefixes reserved by channels.
PUSH_TOPIC = "\x00ch:"
LOCAL_TOPIC = "\x00chl:"

#: What a held publication is: (offset, 0 for none), epoch, the push message.
Held = tuple[int, str, Message]

_OFFSET = b',"offset":'
_EPOCH = b',"epoch":"'
_TAIL = b'"}}}'


def local_topic(endpoint: str, channel: str) -> str:
    """The topic of the subscribers of ``channel`` through the endpoint at path ``endpoint``
    (two endpoints of an app each deliver to their own)."""
    return f"{LOCAL_TOPIC}{endpoint}\x00{channel}"


def push_prefix(channel: str) -> bytes:
    """The bytes every publication push of ``channel`` starts with."""
    name = json.dumps(channel, separators=(",", ":"))
    return b'{"push":{"channel":' + name.encode() + b',"pub":'


def wrap_raw(prefix: bytes, message: Message) -> Message | None:
    """A publication push for a raw topic message (None: binary data that is not UTF-8)."""
    payload = message.payload
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        data = json.dumps(text, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        data = payload if b"\n" not in payload else _compact(value)
    return Message(OP_TEXT, prefix + b'{"data":' + data + b"}}}", message.compress)


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def position_of(payload: bytes) -> tuple[int, str]:
    """The offset and epoch at the end of a positioned publication push ((0, "") if none)."""
    if not payload.endswith(_TAIL):
        return 0, ""
    at = payload.rfind(_OFFSET)
    mark = payload.rfind(_EPOCH)
    if at < 0 or mark < at:
        return 0, ""
    try:
        return int(payload[at + len(_OFFSET) : mark]), payload[mark + len(_EPOCH) : -4].decode()
    except ValueError:
        return 0, ""


class _Side:
    """The channel's receiver in one of its topics."""

    __slots__ = ("_take",)

    def __init__(self, take: Callable[[Message], None]) -> None:
        self._take = take

    def queue_message(self, message: Message) -> bool:
        self._take(message)
        return True


class _Read:
    """A history read in flight, from ``start``: its task, and the pushes held since it began."""

    __slots__ = ("held", "start", "task")

    def __init__(self, start: int, task: asyncio.Task[tuple[list[Stored], Position]]) -> None:
        self.start = start
        self.task = task
        self.held: list[Held] = []


def _truncated(stored: list[Stored], top: Position, limit: int) -> bool:
    """Whether a read stopped at ``limit`` before the top (its tail is not all there is)."""
    return 0 <= limit <= len(stored) and bool(stored) and stored[-1].offset < top.offset


def _offset_of(stored: Stored) -> int:
    return stored.offset


class Channel:
    """Channel ``name`` on this node (a :class:`~harpy.pubsub.Member` of its topics)."""

    __slots__ = (
        "_hub",
        "_on_fault",
        "held",
        "id",
        "last",
        "local",
        "name",
        "positioned",
        "prefix",
        "push",
        "reads",
    )

    route = ""
    presence: dict[str, Any] = {}  # noqa: RUF012 - never written: a member's presence info

    def __init__(
        self,
        hub: Hub[Any],
        name: str,
        positioned: bool,
        on_fault: Callable[[Channel, bool], None],
        endpoint: str,
    ) -> None:
        self._hub = hub
        self._on_fault = on_fault
        self.name = name
        self.id = PUSH_TOPIC + name
        self.push = PUSH_TOPIC + name
        self.local = local_topic(endpoint, name)
        self.positioned = positioned
        self.prefix = push_prefix(name)
        #: The subscriber being set up -> the pushes that came meanwhile.
        self.held: dict[object, list[Held]] = {}
        #: The position of the last publication passed on (None: none yet).
        self.last: Position | None = None
        #: The history reads in flight (shared by the subscribers recovering meanwhile).
        self.reads: list[_Read] = []
        hub.topics.add(self, self.push, _Side(self._from_push))
        if not positioned:
            hub.topics.add(self, name, _Side(self._from_raw))

    def close(self) -> None:
        """Leave the topics (no local subscriber left)."""
        topics = self._hub.topics
        topics.remove(self, self.push)
        if not self.positioned:
            topics.remove(self, self.name)

    def idle(self) -> bool:
        """No subscriber here nor being set up (a read in flight alone keeps nothing open)."""
        setting_up = any(not isinstance(key, _Read) for key in self.held)
        return not setting_up and not self._hub.topics.count(self.local)

    # ----------------------------------------------------------------- in

    def _from_raw(self, message: Message) -> None:
        push = wrap_raw(self.prefix, message)
        if push is None:
            self._on_fault(self, False)  # binary data that is no JSON: counted, not passed on
            return
        self.deliver(0, "", push)

    def _from_push(self, message: Message) -> None:
        offset, epoch = position_of(message.payload) if self.positioned else (0, "")
        self.deliver(offset, epoch, message)

    def deliver(self, offset: int, epoch: str, message: Message) -> None:
        """Pass a push on to the local subscribers (and hold it for those being set up)."""
        for held in self.held.values():
            held.append((offset, epoch, message))
        if offset:
            last = self.last
            if last is not None and epoch == last.epoch and offset <= last.offset:
                return  # already passed on
            self.last = Position(offset, epoch)
            if last is not None and (epoch != last.epoch or offset > last.offset + 1):
                self._on_fault(self, True)
                return
        fan_out(self._hub.topics.receivers(self.local), message)

    async def since(
        self, history: History, offset: int, limit: int, key: object
    ) -> tuple[list[Stored], Position]:
        """The publications past ``offset`` and the top, read once for all the subscribers
        recovering at once: a read in flight from ``offset`` or before is awaited and cut, and
        ``self.held[key]`` gets the positioned pushes held since it began (they may be past what
        it read)."""
        for read in self.reads:
            if read.start <= offset:
                self.held[key][:0] = [h for h in read.held if h[0]]
                stored, top = await asyncio.shield(read.task)
                if not _truncated(stored, top, limit):
                    return stored[bisect_right(stored, offset, key=_offset_of) :], top
                break
        read = _Read(offset, asyncio.ensure_future(history.since(self.name, offset, limit)))
        self.reads.append(read)
        self.held[read] = read.held
        read.task.add_done_callback(lambda _: self._read_done(read))
        return await asyncio.shield(read.task)

    def _read_done(self, read: _Read) -> None:
        self.reads.remove(read)
        del self.held[read]
        if not read.task.cancelled():
            read.task.exception()  # retrieved here: each awaiting subscriber raises it itself

    def note(self, top: Position) -> None:
        """A subscriber read the stream's top: later publications continue from it."""
        last = self.last
        if last is None or last.epoch != top.epoch or top.offset > last.offset:
            self.last = top

    def __repr__(self) -> str:
        return f"<Channel {self.name!r}>"
