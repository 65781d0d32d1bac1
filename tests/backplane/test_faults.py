"""Broker faults: real ``redis-server`` and ``nats-server`` processes killed (SIGKILL) and
started again on the same port while messages flow.  Every message published is either
delivered or counted in ``backplane.dropped``; local delivery never stops."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest
from websockets.asyncio.client import connect

import harpy
from harpy.pubsub.backplane import Backplane, NatsBackplane, RedisBackplane

from ..helpers import serve
from ..timing import TIMEOUT, eventually, scaled
from .conftest import Broker

#: Messages published in the stream; the broker dies after a third, is back after two thirds.
STREAM = 600
#: What the backplane holds while the broker is away: less than the outage, so some drop.
MAX_QUEUE = 100
#: The bound, after the broker is back, on the first message delivered again.
RESUME_WITHIN = 2.0


def make_backplane(backend: str, broker: Broker, tag: str, max_queue: int = MAX_QUEUE) -> Backplane:
    if backend == "redis":
        return RedisBackplane(
            f"redis://{broker.address}/0",
            channel_prefix=f"faults-{tag}:",
            max_queue=max_queue,
            retry_delay=0.2,
        )
    return NatsBackplane(
        f"nats://{broker.address}",
        subject_prefix=f"faults-{tag}.",
        max_queue=max_queue,
        reconnect_time_wait=0.2,
    )


SO_FAR = re.compile(r"(\d+) dropped so far")

#: The most messages one batch in flight at the kill may hold (paced at 2 ms, it is 1 or 2).
IN_FLIGHT_AT_KILL = 8


@pytest.mark.parametrize("backend", ["redis", "nats"])
async def test_a_broker_restart_mid_stream_loses_nothing_uncounted(
    backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    broker: Broker = request.getfixturevalue(f"{backend}_broker")
    loop = asyncio.get_running_loop()
    arrived: list[tuple[float, int]] = []

    def on_message(topic: str, envelope: bytes) -> None:
        arrived.append((loop.time(), int.from_bytes(envelope, "big")))

    backplane = make_backplane(backend, broker, uuid.uuid4().hex[:8])
    await backplane.start(on_message)
    try:
        await backplane.subscribe("stream")
        sent = 0
        restarted_at = 0.0
        for i in range(STREAM):
            backplane.publish("stream", i.to_bytes(4, "big"))
            sent += 1
            if i == STREAM // 3:
                broker.kill()
            elif i == 2 * STREAM // 3:
                await asyncio.to_thread(broker.start)
                restarted_at = loop.time()
            await asyncio.sleep(0.002)  # a paced stream, not a synchronisation
        await eventually(
            lambda: backplane.queued == 0 and len(arrived) + backplane.dropped >= sent,
            timeout=scaled(10.0),
            what=f"arrived + dropped >= {sent}",
        )
        # Every lost message is counted. A message in flight when the server died is never
        # confirmed, so it is counted as dropped even when it did arrive: the count may be
        # over by that batch (the stream is paced, so a batch is a message or two), never under.
        lost = sent - len(arrived)
        assert lost <= backplane.dropped <= lost + IN_FLIGHT_AT_KILL
        assert backplane.dropped >= STREAM // 3 - MAX_QUEUE  # the outage outgrew the queue
        numbers = [n for _, n in arrived]
        assert len(set(numbers)) == len(numbers), "a message arrived twice"
        after = [t for t, n in arrived if n > 2 * STREAM // 3]
        assert after, "nothing arrived after the broker came back"
        assert after[0] - restarted_at <= scaled(RESUME_WITHIN)
        assert backplane.connected
        # The warnings carry the running count: never down, never past the final count, and
        # the one on reconnecting counts the drops of the outage.
        messages = [r.getMessage() for r in caplog.records]
        so_far = [int(m.group(1)) for t in messages if (m := SO_FAR.search(t))]
        assert so_far == sorted(so_far) and 0 < so_far[-1] <= backplane.dropped, messages
        [back] = [t for t in messages if "reconnected; sending" in t]
        at_reconnect = SO_FAR.search(back)
        assert at_reconnect is not None
        assert int(at_reconnect.group(1)) >= STREAM // 3 - MAX_QUEUE - IN_FLIGHT_AT_KILL
    finally:
        await backplane.stop()


@pytest.mark.parametrize("backend", ["redis", "nats"])
async def test_local_delivery_goes_on_while_the_broker_is_down(
    backend: str, request: pytest.FixtureRequest
) -> None:
    broker: Broker = request.getfixturevalue(f"{backend}_broker")

    class Listen:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            ws.join("r")
            ws.subscribe("t")
            ws.send("ready")

    tag = uuid.uuid4().hex[:8]

    def make_app() -> harpy.App:
        app = harpy.App(backplane=make_backplane(backend, broker, tag, max_queue=10))
        app.ws("/l", Listen)
        return app

    a, b = make_app(), make_app()
    async with serve(a), serve(b), connect(f"{a.url}/l") as near, connect(f"{b.url}/l") as far:
        assert await near.recv() == "ready"
        assert await far.recv() == "ready"
        assert b.backplane is not None and a.backplane is not None
        await eventually(lambda: b.backplane.is_subscribed("r:r"))  # type: ignore[union-attr]
        broker.kill()
        await eventually(lambda: not a.backplane.connected)  # type: ignore[union-attr]
        for i in range(20):
            assert a.publish("t", f"t{i}") == 1
        assert a.broadcast("room", rooms=["r"]) == 1
        assert [await asyncio.wait_for(near.recv(), TIMEOUT) for _ in range(21)] == [
            *(f"t{i}" for i in range(20)),
            "room",
        ]
        assert a.backplane.dropped == 11  # 21 held past a queue of 10
        await asyncio.to_thread(broker.start)
        await eventually(lambda: b.backplane.connected, timeout=scaled(RESUME_WITHIN))  # type: ignore[union-attr]
        await eventually(lambda: a.backplane.connected, timeout=scaled(RESUME_WITHIN))  # type: ignore[union-attr]
        # The held ten were sent when the broker came back; b may have been subscribed again
        # before or after them (at most once), but what is published now reaches it.  Bounded:
        # each round waits for one message, at most ten held ones come before.
        for _ in range(12):
            a.broadcast("after", rooms=["r"])
            got = await asyncio.wait_for(far.recv(), TIMEOUT)
            if got == "after":
                break
        else:
            raise AssertionError("what a publishes after the restart never reached b")


async def test_a_confirmation_given_up_leaves_the_nats_client_reading(nats_url: str) -> None:
    """A sender that stops waiting for its flush (cancelled at shutdown, or disconnected)
    must not cancel nats-py's PONG future: the PONG would then stop the client's reader, and
    the backplane would receive nothing more."""
    import nats

    from harpy.pubsub.backplane.nats import _flush

    nc = await nats.connect(nats_url)
    try:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            got.put_nowait(msg.data)

        subject = f"confirm-{uuid.uuid4().hex[:8]}"
        await nc.subscribe(subject, cb=on_msg)
        for _ in range(20):  # waiters given up at once, their PONGs still to come
            waiter = asyncio.ensure_future(asyncio.shield(_flush(nc, TIMEOUT)))
            await asyncio.sleep(0)
            waiter.cancel()
        await _flush(nc, TIMEOUT)  # every PONG before this one has been read
        await nc.publish(subject, b"still reading")
        assert await asyncio.wait_for(got.get(), TIMEOUT) == b"still reading"
    finally:
        await nc.close()
