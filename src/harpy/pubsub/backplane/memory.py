"""An in-process backplane: every ``MemoryBackplane`` created with the same ``name`` shares one bus.

It carries messages between apps of one process (tests, or several apps on one loop); it is
also the reference the contract tests hold the network backends to.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Backplane

__all__ = ["MemoryBackplane"]


class MemoryBackplane(Backplane):
    """A bus in this process, shared by every running instance with the same ``name``."""

    _buses: ClassVar[dict[str, dict[MemoryBackplane, None]]] = {}

    def __init__(self, name: str = "default", *, max_queue: int = 10_000) -> None:
        super().__init__(max_queue=max_queue)
        self.name = name
        """The bus joined: backplanes of one process with the same name share messages."""

    async def _connect(self) -> None:
        self._buses.setdefault(self.name, {})[self] = None

    async def _disconnect(self) -> None:
        bus = self._buses.get(self.name)
        if bus is not None:
            bus.pop(self, None)
            if not bus:
                del self._buses[self.name]

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        for topic, envelope in batch:
            for peer in list(self._buses.get(self.name, ())):
                peer.deliver(topic, envelope)

    async def _subscribe(self, topic: str) -> None:
        pass

    async def _unsubscribe(self, topic: str) -> None:
        pass

    def __repr__(self) -> str:
        return f"<MemoryBackplane {self.name!r} {self.state.value}>"
