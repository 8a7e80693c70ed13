"""Who may talk to us, and how fast: allow-list, per-source INVITE rate, size limits.

Sans-IO: decisions take the source address and ``now`` and return what to do.
Refusals of a source that is not allowed are logged at most once per source per
minute, so a scanner cannot flood the log.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

LOG_INTERVAL = 60.0
MAX_MESSAGE_BYTES = 8192  # larger messages get 513 (the default of server.yaml's limits too)
MAX_HEADERS = 100  # more header lines get 400


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class AdmissionPolicy:
    allow: list[str] = field(default_factory=list)  # networks (CIDR); empty: everyone
    invite_rate: float = 0.0  # new INVITEs per second per source IP; 0: unlimited
    invite_burst: float = 0.0  # bucket size; 0: 2 x rate
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_headers: int = MAX_HEADERS


class Admission:
    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        self._networks = [ipaddress.ip_network(n, strict=False) for n in policy.allow]
        self._buckets: dict[str, TokenBucket] = {}
        self._logged: dict[str, float] = {}
        self.refused_sources = 0
        self.rate_limited = 0

    def allowed(self, host: str) -> bool:
        if not self._networks:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self._networks)

    def should_log_refusal(self, host: str, now: float) -> bool:
        """True at most once per source per minute."""
        last = self._logged.get(host)
        if last is not None and now - last < LOG_INTERVAL:
            return False
        self._logged[host] = now
        if len(self._logged) > 10000:  # bound memory under a spoofed-source flood
            cutoff = now - LOG_INTERVAL
            self._logged = {h: t for h, t in self._logged.items() if t >= cutoff}
        return True

    def take_invite(self, host: str, now: float) -> bool:
        """One new INVITE from ``host`` at ``now``: within its rate or not."""
        rate = self.policy.invite_rate
        if rate <= 0:
            return True
        bucket = self._buckets.get(host)
        if bucket is None:
            burst = self.policy.invite_burst or max(1.0, 2 * rate)
            bucket = self._buckets[host] = TokenBucket(rate, burst, burst, now)
            if len(self._buckets) > 10000:
                idle = [h for h, b in self._buckets.items() if now - b.updated > 60]
                for h in idle:
                    del self._buckets[h]
        ok = bucket.take(now)
        if not ok:
            self.rate_limited += 1
        return ok
