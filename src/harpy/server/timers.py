"""One coarse timer structure for every connection's deadlines.

Handshake, idle, close and heartbeat deadlines are kept in slots of ``resolution`` seconds, and a
single loop timer walks them.  A connection whose activity pushed its deadline back is simply
moved to a later slot when its old slot comes up, so the cost per connection is O(1) per period,
and a server with 10,000 idle connections does no work between their deadlines (one tick a slot).
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

__all__ = ["Timed", "TimerWheel"]


class Timed(Protocol):
    """Something with deadlines: the wheel keeps its slot in ``timer_slot``."""

    timer_slot: int

    def on_timer(self, now: float) -> float:
        """Handle what is due at ``now``; return the next deadline, or 0.0 for none."""
        ...


class TimerWheel:
    """Slots of ``resolution`` seconds, keyed by slot number; only non-empty slots exist."""

    __slots__ = ("_handle", "_handle_slot", "_loop", "_slots", "resolution")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.05) -> None:
        self._loop = loop
        self.resolution = resolution
        self._slots: dict[int, set[Timed]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._handle_slot = -1

    def __len__(self) -> int:
        return sum(len(s) for s in self._slots.values())

    def schedule(self, item: Timed, when: float) -> None:
        """Make ``item`` due at ``when`` (loop time), or never when ``when`` is 0."""
        slot = math.ceil(when / self.resolution) if when > 0 else -1
        old = item.timer_slot
        if old == slot:
            return
        if old >= 0:
            items = self._slots.get(old)
            if items is not None:
                items.discard(item)
                if not items:
                    del self._slots[old]
        item.timer_slot = slot
        if slot < 0:
            return
        items = self._slots.get(slot)
        if items is None:
            self._slots[slot] = {item}
            if self._handle is None or slot < self._handle_slot:
                self._arm(slot)
        else:
            items.add(item)

    def cancel(self, item: Timed) -> None:
        self.schedule(item, 0.0)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._slots.clear()

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle_slot = slot
        self._handle = self._loop.call_at(slot * self.resolution, self._tick)

    def _tick(self) -> None:
        self._handle = None
        now = self._loop.time()
        current = math.floor(now / self.resolution)
        due = [s for s in self._slots if s <= current]
        due.sort()
        for slot in due:
            items = self._slots.pop(slot, None)
            if not items:
                continue
            for item in items:
                item.timer_slot = -1
                nxt = item.on_timer(now)
                if nxt > 0 and item.timer_slot < 0:
                    self.schedule(item, max(nxt, now + self.resolution))
        # Items moved while walking may have armed the timer for a far slot: the earliest wins.
        if self._slots:
            first = min(self._slots)
            if self._handle is None or first < self._handle_slot:
                self._arm(first)
