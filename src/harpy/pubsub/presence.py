"""Presence: who is in each topic and room, on every node, with a small info dict each.

Each node keeps its own members, and a copy of every other node's, which it learns from
announcements on the backplane channel ``presence``: ``join`` / ``leave`` / ``info`` as they
happen, and every ``interval`` seconds a ``sync`` (the node's whole presence) that also proves
the node is alive.  A node not heard from for ``ttl`` seconds (``3 * interval`` by default) is
dropped with a ``leave`` event for each of its members; the check runs every ``interval``, so
a node that dies leaves everyone's presence within ``ttl + interval`` seconds.  A node that
stops cleanly says ``bye`` and is dropped at once; a node that starts says ``hello`` and every
other node answers with a ``sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
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


class Presence:
    """The members of every topic and room across nodes; see the module docstring."""

    def __init__(self, interval: float = 1.0, ttl: float | None = None) -> None:
        if not interval > 0:
            raise ValueError("presence interval must be > 0 seconds")
        ttl = 3 * interval if ttl is None else ttl
        if not ttl > interval:
            raise ValueError("presence ttl must be longer than its interval")
        #: Seconds between two ``sync`` announcements (and expiry checks).
        self.interval = interval
        #: Seconds after which a silent node is dropped.
        self.ttl = ttl
        self._local: dict[_Key, dict[str, dict[str, Any]]] = {}
        self._remote: dict[str, dict[_Key, dict[str, dict[str, Any]]]] = {}
        self._deadline: dict[str, float] = {}
        self._listeners: list[Listener] = []
        self._send: Send | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------- reading

    def members(self, kind: GroupKind, group: str) -> dict[str, dict[str, Any]]:
        """``{connection id: info}`` of everyone in the group, on every node."""
        key = (_check_kind(kind), group)
        out = dict(self._local.get(key, ()))
        for groups in self._remote.values():
            out.update(groups.get(key, ()))
        return out

    def count(self, kind: GroupKind, group: str) -> int:
        key = (_check_kind(kind), group)
        return len(self._local.get(key, ())) + sum(
            len(groups.get(key, ())) for groups in self._remote.values()
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
        self._announce({"op": "join", "k": kind, "g": group, "id": conn_id, "info": info})
        self._emit(PresenceEvent("join", kind, group, conn_id, info, True))

    def leave(self, kind: GroupKind, group: str, conn_id: str) -> None:
        members = self._local.get((kind, group))
        if members is None or conn_id not in members:
            return
        info = members.pop(conn_id)
        if not members:
            del self._local[(kind, group)]
        self._announce({"op": "leave", "k": kind, "g": group, "id": conn_id})
        self._emit(PresenceEvent("leave", kind, group, conn_id, info, True))

    def update(self, conn_id: str, info: dict[str, Any]) -> None:
        """``conn_id`` has new info, in every group it is in."""
        changed = False
        for members in self._local.values():
            if conn_id in members:
                members[conn_id] = info
                changed = True
        if changed:
            self._announce({"op": "info", "id": conn_id, "info": info})

    # ----------------------------------------------------------------- the other nodes

    async def start(self, send: Send) -> None:
        """Announce through ``send`` from now on, and keep the other nodes' presence fresh."""
        self._send = send
        self._announce({"op": "hello"})
        self._sync()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def stop(self) -> None:
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        self._deadline[node] = loop.time() + self.ttl
        groups = self._remote.setdefault(node, {})
        try:
            if op == "hello":
                self._sync()
            elif op == "join":
                key = (_check_kind(note["k"]), str(note["g"]))
                info = _check_info(note["info"])
                groups.setdefault(key, {})[str(note["id"])] = info
                self._emit(PresenceEvent("join", key[0], key[1], str(note["id"]), info, False))
            elif op == "leave":
                self._remote_leave(groups, (_check_kind(note["k"]), str(note["g"])), note["id"])
            elif op == "info":
                info = _check_info(note["info"])
                for members in groups.values():
                    if note["id"] in members:
                        members[note["id"]] = info
            elif op == "sync":
                self._replace(node, groups, note["m"])
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("harpy: ignored a bad presence announcement %r: %r", op, exc)

    def _replace(self, node: str, groups: dict[_Key, dict[str, dict[str, Any]]], m: Any) -> None:
        fresh: dict[_Key, dict[str, dict[str, Any]]] = {}
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

    def _remote_leave(
        self, groups: dict[_Key, dict[str, dict[str, Any]]], key: _Key, conn_id: str
    ) -> None:
        members = groups.get(key)
        if members is None or conn_id not in members:
            return
        info = members.pop(conn_id)
        if not members:
            del groups[key]
        self._emit(PresenceEvent("leave", key[0], key[1], conn_id, info, False))

    def _drop_node(self, node: str) -> None:
        self._deadline.pop(node, None)
        groups = self._remote.pop(node, None)
        if groups:
            for key, members in list(groups.items()):
                for conn_id in list(members):
                    self._remote_leave(groups, key, conn_id)

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            self._sync()
            now = loop.time()
            for node, deadline in list(self._deadline.items()):
                if deadline <= now:
                    logger.info("harpy: presence dropped node %s (silent for %s s)", node, self.ttl)
                    self._drop_node(node)

    def _sync(self) -> None:
        members = [
            [kind, group, conn_id, info]
            for (kind, group), conns in self._local.items()
            for conn_id, info in conns.items()
        ]
        self._announce({"op": "sync", "m": members})

    def _announce(self, note: dict[str, Any]) -> None:
        send = self._send
        if send is not None:
            send(json.dumps(note, separators=(",", ":")).encode("utf-8"))

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
