"""Call status callbacks (``status_url`` on a route) and the webhook counters for /metrics.

``StatusHooks`` sits in the server's ``ServerHooks`` seam in front of the metrics: on the 200 OK
and at the end of a call whose route has a ``status_url`` it queues a signed POST (``Webhooks.
status``: returns at once, so the pacer and the SIP pump never wait on an application).
"""

from __future__ import annotations

import itertools
import time
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from telephony.calls import Call
from telephony.media_io import ServerHooks

from .service import LATENCY_BUCKETS, Webhooks, call_details
from .source import secret_of


class StatusHooks:
    """ServerHooks: the inner hooks (metrics) first, then the route's status callback."""

    def __init__(self, webhooks: Webhooks, inner: ServerHooks | None) -> None:
        self.webhooks = webhooks
        self.inner = inner

    def _send(self, call: Call, event: str, **fields: object) -> None:
        source = call.source
        route, speech = getattr(source, "route", None), getattr(source, "speech", None)
        if route is None or speech is None or route.status_url is None:
            return
        payload = {"event": event, **call_details(call.info), "timestamp": time.time(), **fields}
        self.webhooks.status(route.status_url, secret_of(route, speech), payload)

    def call_answered(self, call: Call, seconds: float) -> None:
        if self.inner is not None:
            self.inner.call_answered(call, seconds)
        self._send(call, "call.answered", answer_s=round(seconds, 3))

    def call_ended(self, call: Call, reason: str) -> None:
        if self.inner is not None:
            self.inner.call_ended(call, reason)
        failure = getattr(call.source, "failure", None)
        duration = (time.monotonic() - call.confirmed_at) if call.confirmed_at is not None else 0.0
        self._send(call, "call.completed", reason=reason, answered=call.confirmed_at is not None,
                   duration_s=round(max(0.0, duration), 3), **({"webhook_failure": failure} if failure else {}))


class WebhookCollector:
    """Prometheus: webhook requests by outcome, in flight; status callbacks sent and waiting."""

    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    def collect(self):
        w = self.webhooks
        yield _by_outcome("sip_tts_webhook_requests", "webhook requests by outcome (answered, invalid, timeout, "
                          "unreachable, http_error, abandoned: the caller hung up first)", w.requests)
        yield GaugeMetricFamily("sip_tts_webhook_in_flight", "webhook requests being sent", value=w.in_flight)
        counts = list(itertools.accumulate(w.latency))
        yield HistogramMetricFamily("sip_tts_webhook_seconds", "webhook request to reply (or failure): the caller "
                                    "hears nothing meanwhile", sum_value=w.latency_sum,
                                    buckets=[(str(le), n) for le, n in zip(LATENCY_BUCKETS, counts)]
                                    + [("+Inf", counts[-1])])
        yield _by_outcome("sip_tts_status_callbacks", "status callbacks: sent, failed, dropped (queue full)",
                          w.callbacks)
        yield GaugeMetricFamily("sip_tts_status_callbacks_queued", "status callbacks waiting", value=w.status_queued)


def _by_outcome(name: str, text: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=["outcome"])
    for outcome, n in sorted(counts.items()):
        family.add_metric([outcome], n)
    return family
