"""Presence: who is in each topic and room, on every node, with a small info dict each.

Each node keeps its own members, and a copy of every other node's, which it learns from
announcements on the backplane channel ``presence``.  Announcements stay small whatever the
number of members (every one is under ``CHUNK_BYTES``, well below NATS' 1 MiB ``max_payload``):

- ``d`` (deltas): the joins, leaves and info changes of one turn of the event loop, gathered
  into one announcement (split into several past ``CHUNK_BYTES``), each with the next number of
  the node's **sequence** ``s``.
- ``beat``: every ``interval`` seconds, the node's sequence number; it proves the node alive.
- ``sync``: the node's whole presence, in chunks of at most ``CHUNK_BYTES`` (``i`` of ``n``,
  one version ``v``), with the sequence number it includes (``s``): sent when another node
  starts (``hello``) or asks for it (``want``), and every ``sync_every`` beats.  A receiver
  replaces that node's members once it has every chunk of one version.

A receiver that sees a gap in a node's sequence (a delta or beat lost, or the first it hears
of the node) asks that node for a ``sync`` (``want``, at most once per ``interval``) and
applies what it has meanwhile.  A node not heard from for ``ttl`` seconds (``3 * interval`` by
default) is dropped with a ``leave`` event for each of its members; the check runs every
``interval``, so a node that dies leaves everyone's presence within ``ttl + interval`` seconds.
A node that stops cleanly says ``bye`` and is dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from .groups import GroupKind

__all__ = ["Presence", "PresenceEvent"]

logger = logging.getLogger("harpy")


class PresenceEvent(NamedTuple):
    """A connection joined or left a topic or room, on this node (``local``) or another."""

    action: Literal["join", "leave"]
    """``"join"`` or ``"leave"``."""
    kind: GroupKind
    """``GroupKind.TOPIC`` or ``GroupKind.ROOM`` (equal to ``"topic"`` and ``"room"``)."""
    group: str
    """The topic's or room's name."""
    id: str
    """The connection's id (``ws.id``), unique across nodes."""
    info: dict[str, Any]
    """What the connection told presence about itself (``ws.presence``)."""
    local: bool
    """True when the connection is on this node."""


Listener = Callable[[PresenceEvent], Any]
#: ``send(payload)``: announce ``payload`` (JSON bytes) to the other nodes.
Send = Callable[[bytes], None]

_Key = tuple[GroupKind, str]  # (kind, group)
_Members = dict[_Key, dict[str, dict[str, Any]]]

#: The most bytes of members in one announcement (a chunk of a sync, or of deltas).
CHUNK_BYTES = 256 * 1024


class _Peer:
    """What this node knows of another: its members, the last number of its sequence, the
    sync being received, when a sync was last asked for."""

    __slots__ = ("asked", "deadline", "groups", "parts", "seq", "token", "version")

    def __init__(self) -> None:
        self.groups: _Members = {}
        self.seq: int | None = None
        self.token = ""
        self.version: Any = None
        self.parts: dict[int, list[Any]] = {}
        self.asked = -1e9
        self.deadline = 0.0


class Presence:
    """The members of every topic and room across nodes; see the module docstring."""

    def __init__(
        self, interval: float = 1.0, ttl: float | None = None, sync_every: int = 30
    ) -> None:
        if not interval > 0:
            raise ValueError("presence interval must be > 0 seconds")
        ttl = 3 * interval if ttl is None else ttl
        if not ttl > interval:
            raise ValueError("presence ttl must be longer than its interval")
        #: Seconds between two ``sync`` announcements (and expiry checks).
        self.interval = interval
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError("presence sync_every must be a whole number of intervals >= 1")
        #: Seconds after which a silent node is dropped.
        self.ttl = ttl
        #: Beats between two full syncs (a node also sends one when asked).
        self.sync_every = sync_every
        self._local: _Members = {}
        self._remote: dict[str, _Peer] = {}
        #: This node, as it names itself in its announcements (a ``want`` names the node asked).
        self._token = os.urandom(8).hex()
        self._seq = 0
        self._version = 0
        self._pending: list[list[Any]] = []  # deltas of this turn of the loop
        self._hello_at = -1e9
        self._flush: asyncio.Handle | None = None
        self._listeners: list[Listener] = []
        self._send: Send | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------- reading

    def members(self, kind: GroupKind, group: str) -> dict[str, dict[str, Any]]:
        """``{connection id: info}`` of everyone in the group, on every node."""
        key = (_check_kind(kind), group)
        out = dict(self._local.get(key, ()))
        for peer in self._remote.values():
            out.update(peer.groups.get(key, ()))
        return out

    def count(self, kind: GroupKind, group: str) -> int:
        key = (_check_kind(kind), group)
        return len(self._local.get(key, ())) + sum(
            len(peer.groups.get(key, ())) for peer in self._remote.values()
        )

    @property
    def nodes(self) -> int:
        """The other nodes this one hears from."""
        return len(self._remote)

    def on_change(self, fn: Listener) -> Listener:
        """Call ``fn(event)`` for every join and leave (an async ``fn`` runs as a task)."""
        if not callable(fn):
            raise TypeError(f"a presence listener must be callable, not {fn!r}")
        self._listeners.append(fn)
        return fn

    # ----------------------------------------------------------------- local changes

    def join(self, kind: GroupKind, group: str, conn_id: str, info: dict[str, Any]) -> None:
        self._local.setdefault((kind, group), {})[conn_id] = info
        self._delta(["j", kind, group, conn_id, info])
        self._emit(PresenceEvent("join", kind, group, conn_id, info, True))

    def leave(self, kind: GroupKind, group: str, conn_id: str) -> None:
        members = self._local.get((kind, group))
        if members is None or conn_id not in members:
            return
        info = members.pop(conn_id)
        if not members:
            del self._local[(kind, group)]
        self._delta(["l", kind, group, conn_id])
        self._emit(PresenceEvent("leave", kind, group, conn_id, info, True))

    def update(self, conn_id: str, info: dict[str, Any]) -> None:
        """``conn_id`` has new info, in every group it is in."""
        changed = False
        for members in self._local.values():
            if conn_id in members:
                members[conn_id] = info
                changed = True
        if changed:
            self._delta(["i", conn_id, info])

    # ----------------------------------------------------------------- the other nodes

    async def start(self, send: Send) -> None:
        """Announce through ``send`` from now on, and keep the other nodes' presence fresh."""
        self._send = send
        self._pending.clear()
        self._hello_at = asyncio.get_running_loop().time()
        self._announce({"op": "hello", "p": self._token})
        self._sync()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def stop(self) -> None:
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flush_deltas()
        self._announce({"op": "bye"})
        self._send = None
        for node in list(self._remote):
            self._drop_node(node)

    def receive(self, node: str, payload: bytes) -> None:
        """An announcement of another node."""
        try:
            note = json.loads(payload)
            op = note["op"]
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("harpy: ignored a bad presence announcement: %r", exc)
            return
        if op == "bye":
            self._drop_node(node)
            return
        loop = asyncio.get_running_loop()
        peer = self._remote.get(node)
        if peer is None:
            peer = self._remote[node] = _Peer()
        peer.deadline = loop.time() + self.ttl
        try:
            if op == "hello":
                peer.token = str(note.get("p", ""))
                self._sync()
            elif op == "want":
                if note.get("p") == self._token:
                    self._sync()
            elif op == "d":
                seq = int(note["s"])
                if peer.seq is None or seq != peer.seq + 1:
                    self._ask(node, peer)
                peer.seq = seq
                for delta in note["d"]:
                    self._apply(peer.groups, delta)
            elif op == "beat":
                peer.token = str(note.get("p", peer.token))
                if peer.seq is None or int(note["s"]) != peer.seq:
                    self._ask(node, peer)
            elif op == "sync":
                peer.token = str(note.get("p", peer.token))
                self._sync_part(node, peer, note)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            logger.warning("harpy: ignored a bad presence announcement %r: %r", op, exc)

    def _apply(self, groups: _Members, delta: list[Any]) -> None:
        action = delta[0]
        if action == "j":
            key = (_check_kind(delta[1]), str(delta[2]))
            conn_id, info = str(delta[3]), _check_info(delta[4])
            members = groups.setdefault(key, {})
            new = conn_id not in members
            members[conn_id] = info
            if new:
                self._emit(PresenceEvent("join", key[0], key[1], conn_id, info, False))
        elif action == "l":
            self._remote_leave(groups, (_check_kind(delta[1]), str(delta[2])), str(delta[3]))
        elif action == "i":
            conn_id, info = str(delta[1]), _check_info(delta[2])
            for members in groups.values():
                if conn_id in members:
                    members[conn_id] = info
        else:
            raise ValueError(f"unknown presence change {action!r}")

    def _ask(self, node: str, peer: _Peer) -> None:
        """Ask ``node`` for a full sync (its sequence has a gap), at most once per interval."""
        now = asyncio.get_running_loop().time()
        if peer.parts or (peer.seq is None and now - self._hello_at < self.ttl):
            return  # a sync is on its way (being received, or the answer to our hello)
        if peer.token and now - peer.asked >= self.interval:
            peer.asked = now
            self._announce({"op": "want", "p": peer.token})

    def _sync_part(self, node: str, peer: _Peer, note: dict[str, Any]) -> None:
        version, index, count = note["v"], int(note["i"]), int(note["n"])
        if not 0 <= index < count:
            raise ValueError(f"sync chunk {index} of {count}")
        if version != peer.version:  # a newer sync: what was left of the older one is moot
            peer.version = version
            peer.parts = {}
        peer.parts[index] = note["m"]
        if len(peer.parts) < count:
            return
        parts, peer.parts, peer.version = peer.parts, {}, None
        self._replace(peer.groups, [m for i in range(count) for m in parts[i]])
        peer.seq = int(note["s"])

    def _replace(self, groups: _Members, m: Any) -> None:
        fresh: _Members = {}
        for kind, group, conn_id, info in m:
            fresh.setdefault((_check_kind(kind), str(group)), {})[str(conn_id)] = _check_info(info)
        for key, members in list(groups.items()):
            for conn_id in list(members):
                if conn_id not in fresh.get(key, ()):
                    self._remote_leave(groups, key, conn_id)
        for key, members in fresh.items():
            known = groups.setdefault(key, {})
            for conn_id, info in members.items():
                new = conn_id not in known
                known[conn_id] = info
                if new:
                    self._emit(PresenceEvent("join", key[0], key[1], conn_id, info, False))

    def _remote_leave(self, groups: _Members, key: _Key, conn_id: str) -> None:
        members = groups.get(key)
        if members is None or conn_id not in members:
            return
        info = members.pop(conn_id)
        if not members:
            del groups[key]
        self._emit(PresenceEvent("leave", key[0], key[1], conn_id, info, False))

    def _drop_node(self, node: str) -> None:
        peer = self._remote.pop(node, None)
        if peer is not None:
            groups = peer.groups
            for key, members in list(groups.items()):
                for conn_id in list(members):
                    self._remote_leave(groups, key, conn_id)

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        beats = 0
        while True:
            await asyncio.sleep(self.interval)
            beats += 1
            if beats % self.sync_every == 0:
                self._sync()
            else:
                self._flush_deltas()
                self._announce({"op": "beat", "s": self._seq, "p": self._token})
            now = loop.time()
            for node, peer in list(self._remote.items()):
                if peer.deadline <= now:
                    logger.info("harpy: presence dropped node %s (silent for %s s)", node, self.ttl)
                    self._drop_node(node)

    def _delta(self, change: list[Any]) -> None:
        """Announce ``change`` with the others of this turn of the loop (one announcement)."""
        if self._send is None:
            return
        self._pending.append(change)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._flush_deltas)

    def _flush_deltas(self) -> None:
        flush, self._flush = self._flush, None
        if flush is not None:
            flush.cancel()
        pending, self._pending = self._pending, []
        for chunk in _chunks(pending):
            self._seq += 1
            self._announce_raw(b'{"op":"d","s":%d,"d":[%s]}' % (self._seq, chunk))

    def _sync(self) -> None:
        """Announce this node's whole presence, in chunks (one version, all at once)."""
        self._flush_deltas()  # the sync includes them: its ``s`` says so
        self._version += 1
        members = [
            [kind, group, conn_id, info]
            for (kind, group), conns in self._local.items()
            for conn_id, info in conns.items()
        ]
        chunks = list(_chunks(members)) or [b""]
        head = json.dumps(
            {"op": "sync", "p": self._token, "v": self._version, "s": self._seq}
        ).encode()[:-1]
        for i, chunk in enumerate(chunks):
            self._announce_raw(b'%s,"i":%d,"n":%d,"m":[%s]}' % (head, i, len(chunks), chunk))

    def _announce(self, note: dict[str, Any]) -> None:
        self._announce_raw(json.dumps(note, separators=(",", ":")).encode("utf-8"))

    def _announce_raw(self, payload: bytes) -> None:
        send = self._send
        if send is not None:
            send(payload)

    def _emit(self, event: PresenceEvent) -> None:
        for fn in self._listeners:
            try:
                result = fn(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                logger.exception("harpy: presence listener %r failed", fn)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("harpy: presence listener failed", exc_info=task.exception())


def _chunks(items: list[Any]) -> Any:
    """``items`` as JSON, comma-separated, in pieces of at most ``CHUNK_BYTES`` (an item larger
    than that is a piece of its own)."""
    piece: list[bytes] = []
    size = 0
    for item in items:
        encoded = json.dumps(item, separators=(",", ":")).encode("utf-8")
        if piece and size + len(encoded) + 1 > CHUNK_BYTES:
            yield b",".join(piece)
            piece, size = [], 0
        piece.append(encoded)
        size += len(encoded) + 1
    if piece:
        yield b",".join(piece)


def _check_kind(kind: Any) -> GroupKind:
    """The member of ``kind`` (a GroupKind or its value, as announcements carry it)."""
    if kind == GroupKind.TOPIC:
        return GroupKind.TOPIC
    if kind == GroupKind.ROOM:
        return GroupKind.ROOM
    raise ValueError(f"presence kind must be 'topic' or 'room', not {kind!r}")


def _check_info(info: Any) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise TypeError(f"presence info must be a dict, not {type(info).__name__}")
    return info
