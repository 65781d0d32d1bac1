"""Prometheus metrics of one app (``App(metrics=True)``; ``pip install 'harpy-ws[metrics]'``).

Read at scrape time from what the app counts anyway (:class:`~harpy.app.http.Stats`, the
connections' own counters, the server's drops, the backplane's queue), so serving messages costs
nothing more with metrics on.  Each app has its own ``CollectorRegistry``: several apps in one
process do not clash.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..exceptions import require_extra

if TYPE_CHECKING:
    from .app import App

__all__ = ["make_registry"]


def make_registry(app: App) -> Any:
    """A fresh registry holding ``app``'s collector."""
    require_extra("prometheus_client", "prometheus_client", "metrics", "App(metrics=True)")
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    registry.register(_AppCollector(app))
    return registry


class _AppCollector:
    """Builds every family on each scrape from the app's counters."""

    def __init__(self, app: App) -> None:
        self._app = app

    def describe(self) -> list[Any]:
        return []  # families are known only at collect time; nothing to check up front

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        app = self._app
        stats = app.stats
        open_ = GaugeMetricFamily(
            "harpy_connections_open", "Open WebSocket connections", labels=["route"]
        )
        for route in app.routes:
            open_.add_metric([route.pattern], app.connections.count(route.pattern))
        yield open_
        refused = CounterMetricFamily(
            "harpy_handshakes_refused",
            "Upgrades and requests refused, by HTTP status",
            labels=["status"],
        )
        for status, count in sorted(stats.refused.items()):
            refused.add_metric([str(status)], count)
        yield refused
        totals = {
            "messages_in": stats.messages_in,
            "messages_out": stats.messages_out,
            "bytes_in": stats.bytes_in,
            "bytes_out": stats.bytes_out,
        }
        for ws in app.connections:
            totals["messages_in"] += ws.messages_in
            totals["messages_out"] += ws.messages_out
            totals["bytes_in"] += ws.bytes_in
            totals["bytes_out"] += ws.bytes_out
        yield CounterMetricFamily(
            "harpy_messages_received", "WebSocket messages received", value=totals["messages_in"]
        )
        yield CounterMetricFamily(
            "harpy_messages_sent",
            "WebSocket messages sent or queued (not dropped)",
            value=totals["messages_out"],
        )
        yield CounterMetricFamily(
            "harpy_received_bytes",
            "Bytes read from WebSocket connections (frames, upgrade)",
            value=totals["bytes_in"],
        )
        yield CounterMetricFamily(
            "harpy_sent_payload_bytes",
            "Payload bytes of messages sent or queued",
            value=totals["bytes_out"],
        )
        errors = CounterMetricFamily(
            "harpy_handler_errors", "Exceptions raised by handlers", labels=["route"]
        )
        for pattern, count in sorted(stats.handler_errors.items()):
            errors.add_metric([pattern], count)
        yield errors
        closes = CounterMetricFamily(
            "harpy_closes", "Closed connections, by close code", labels=["code"]
        )
        for code, count in sorted(stats.closes.items()):
            closes.add_metric([str(code)], count)
        yield closes
        drops = app.drops
        yield CounterMetricFamily(
            "harpy_backpressure_dropped",
            "Messages dropped at a backpressure limit",
            value=drops["backpressure"],
        )
        dropped = CounterMetricFamily(
            "harpy_messages_dropped",
            "Messages lost in this process, by cause (backpressure, budget, closing)",
            labels=["reason"],
        )
        for reason, count in sorted(drops.items()):
            dropped.add_metric([reason], count)
        yield dropped
        backplane = app.backplane
        if backplane is not None:
            yield GaugeMetricFamily(
                "harpy_backplane_queue_length",
                "Envelopes waiting to go to the backplane",
                value=backplane.queued,
            )
            yield CounterMetricFamily(
                "harpy_backplane_dropped",
                "Envelopes the backplane dropped",
                value=backplane.dropped,
            )
            lost = CounterMetricFamily(
                "harpy_backplane_lost",
                "Envelopes from other nodes that never arrived here, by origin node and cause",
                labels=["origin", "cause"],
            )
            for (origin, cause), count in sorted(backplane.losses.items()):
                lost.add_metric([origin, cause], count)
            yield lost
