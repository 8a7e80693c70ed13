"""Prometheus metrics of the calls, the engine and the prompt cache.

Served over HTTP by the API (``sip_tts/api``: ``GET /metrics``, beside ``GET
/health``), and on ``metrics.listen`` when that is set. The server reports
through the ``ServerHooks`` seam; telephony/ itself knows nothing of Prometheus.
"""

from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.base import EngineStats
from engine.prompt_cache import PromptCache

from telephony.calls import Call

log = logging.getLogger("sip_tts.metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class _Live:
    """Values read at scrape time: the engine's running totals and the prompt cache's counters."""

    def __init__(self, engine: Callable[[], EngineStats | None], cache: Callable[[], PromptCache | None],
                 engine_health: Callable[[], tuple[bool, int]] | None = None,
                 pacer_late: Callable[[], int] | None = None) -> None:
        self.engine = engine
        self.cache = cache
        self.engine_health = engine_health
        self.pacer_late = pacer_late

    def collect(self):
        if self.pacer_late is not None:
            yield CounterMetricFamily("sip_tts_pacer_late_wakeups", "pacing ticks that woke > 10 ms after their "
                                      "deadline (every call's packet of that slot went out late)",
                                      value=self.pacer_late())
        st = self.engine()
        if st is not None:
            yield CounterMetricFamily("sip_tts_engine_steps", "batched engine steps (T3 decode steps; espeak: "
                                      "utterances)", value=st.steps)
            yield CounterMetricFamily("sip_tts_engine_step_items", "utterances in those steps (mean batch size = "
                                      "rate(items) / rate(steps))", value=st.step_items)
            yield CounterMetricFamily("sip_tts_engine_busy_seconds", "engine worker time (real-time factor = "
                                      "rate(busy) / rate(audio))", value=st.busy_seconds)
            yield CounterMetricFamily("sip_tts_engine_audio_seconds", "audio produced", value=st.audio_seconds)
            if st.checks:
                figure = GaugeMetricFamily("sip_tts_engine_check_figure", "start-up check of a fast path against "
                                           "its exact one (dB, error or agreement: README, 'verify-engine')",
                                           labels=["path"])
                fallback = GaugeMetricFamily("sip_tts_engine_fallback", "1: the fast path failed its start-up "
                                             "check and its exact path runs instead", labels=["path"])
                for path, value, kept in st.checks:
                    figure.add_metric([path], value)
                    fallback.add_metric([path], 0 if kept else 1)
                yield figure
                yield fallback
        if self.engine_health is not None:
            up, restarts = self.engine_health()
            yield GaugeMetricFamily("sip_tts_engine_up", "1 while the engine (its process) is running", value=int(up))
            yield CounterMetricFamily("sip_tts_engine_restarts", "engine process restarts after it died",
                                      value=restarts)
        cache = self.cache()
        if cache is not None:
            yield CounterMetricFamily("sip_tts_prompt_cache_hits", "prompts served from the cache", value=cache.hits)
            yield CounterMetricFamily("sip_tts_prompt_cache_misses", "prompts not in the cache (rendered)",
                                      value=cache.misses)
            yield GaugeMetricFamily("sip_tts_prompt_cache_bytes", "bytes of rendered prompts held", value=cache.bytes)
            yield GaugeMetricFamily("sip_tts_prompt_cache_prompts", "rendered prompts held", value=len(cache))
            shared = cache.shared
            if shared is not None:  # the fleet's Redis (second level)
                yield GaugeMetricFamily("sip_tts_shared_cache_up", "0 while Redis failed and is not used",
                                        value=int(shared.up))
                for name, text in (("hits", "entries found in Redis"), ("misses", "entries not in Redis"),
                                   ("errors", "Redis errors and timeouts (never fail a call)"),
                                   ("rejected", "entries ignored: corrupted or another format version"),
                                   ("writes", "entries written"), ("dropped", "writes dropped (Redis down, "
                                                                              "queue full)")):
                    yield CounterMetricFamily(f"sip_tts_shared_cache_{name}", text, value=getattr(shared, name))


class Metrics:
    def __init__(self, active: Callable[[], int], engine_queue: Callable[[], int] | None = None,
                 engine_stats: Callable[[], EngineStats | None] = lambda: None,
                 cache: Callable[[], PromptCache | None] = lambda: None,
                 engine_health: Callable[[], tuple[bool, int]] | None = None,
                 pacer_late: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_Live(engine_stats, cache, engine_health, pacer_late))
        self.calls_active = Gauge("sip_tts_calls_active", "calls in progress", registry=r)
        self.calls_active.set_function(active)
        self.calls_total = Counter("sip_tts_calls_total", "calls ended, by outcome", ["outcome"], registry=r)
        self.invite_to_200 = Histogram("sip_tts_invite_to_200_seconds", "INVITE received to 200 OK sent",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.first_audio = Histogram("sip_tts_first_audio_seconds", "INVITE received to the first audible RTP packet",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.call_engine_first_audio = Histogram(
            "sip_tts_call_engine_first_audio_seconds", "each utterance a call asks of the engine, asked to its "
            "first audio (for a call whose first prompt is made for it, the engine's share of "
            "sip_tts_first_audio_seconds; cached prompts do not ask it)",
            buckets=LATENCY_BUCKETS, registry=r)
        self.late_frames = Counter("sip_tts_late_frames_total", "20 ms slots skipped because the loop stalled",
                                   registry=r)
        self.silence_frames = Counter("sip_tts_silence_frames_total",
                                      "frames sent as silence because audio was not ready", registry=r)
        self.dtmf = Counter("sip_tts_dtmf_digits_total", "DTMF digits received", ["source"], registry=r)
        self.engine_queue = Gauge("sip_tts_engine_queue_depth", "utterances waiting for the engine", registry=r)
        if engine_queue is not None:
            self.engine_queue.set_function(engine_queue)

    # -- ServerHooks ------------------------------------------------------------------
    def call_answered(self, call: Call, seconds: float) -> None:
        self.invite_to_200.observe(seconds)

    def call_ended(self, call: Call, reason: str) -> None:
        self.calls_total.labels(reason).inc()
        sender = call.sender
        if sender is not None:
            self.late_frames.inc(sender.skipped_frames)
            self.silence_frames.inc(sender.silence_frames)
            if sender.first_audio_at is not None:
                self.first_audio.observe(max(0.0, sender.first_audio_at - call.invite_at))
        for digit in call.digits:
            self.dtmf.labels(digit.source).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
