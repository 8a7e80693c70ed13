"""Lock out sources that guess digest passwords (online brute force), sans-IO.

Failed digest answers are counted over a sliding window per source address and per
username. A source past ``max_failures`` in ``window_s`` is locked out for
``lockout_s``. A username past ``max_failures`` (a guess spread over many sources) is
"under attack": from then on, until its window empties, one more failure for it locks the
failing source at once. Sources that answer correctly are never locked: the PBX keeps
calling while someone else guesses its password. Unknown usernames count exactly as known
ones, so the lockout tells nothing about which usernames exist.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_TRACKED = 100_000  # sources/usernames with recent failures kept; past it, the stalest go first


@dataclass
class LockoutPolicy:
    max_failures: int = 10
    window_s: float = 300.0
    lockout_s: float = 900.0


@dataclass
class Lockout:
    policy: LockoutPolicy = field(default_factory=LockoutPolicy)
    failures: int = 0  # failed digest answers seen (a counter for /metrics)
    lockouts: int = 0  # lockouts imposed
    _by_source: dict[str, deque[float]] = field(default_factory=dict)
    _by_user: dict[str, deque[float]] = field(default_factory=dict)
    _locked: dict[str, float] = field(default_factory=dict)  # source → locked until

    def locked(self, source: str, now: float) -> bool:
        until = self._locked.get(source)
        if until is None:
            return False
        if now >= until:  # expired on its own
            del self._locked[source]
            self._by_source.pop(source, None)
            return False
        return True

    def failure(self, source: str, username: str, now: float) -> bool:
        """Count one failed answer; True when it locks ``source`` out now (log it: once per lockout)."""
        self.failures += 1
        if self.locked(source, now):
            return False
        by_source = self._count(self._by_source, source, now)
        by_user = self._count(self._by_user, username, now)
        limit = self.policy.max_failures
        if len(by_source) > limit or len(by_user) > limit:
            if len(self._locked) >= MAX_TRACKED:
                self._locked = {s: t for s, t in self._locked.items() if t > now}
            self._locked[source] = now + self.policy.lockout_s
            self.lockouts += 1
            return True
        return False

    def _count(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        times = table.get(key)
        if times is None:
            if len(table) >= MAX_TRACKED:
                self._prune(table, now)
            times = table[key] = deque()
        times.append(now)
        horizon = now - self.policy.window_s
        while times and times[0] <= horizon:
            times.popleft()
        return times

    def _prune(self, table: dict[str, deque[float]], now: float) -> None:
        horizon = now - self.policy.window_s
        for key in [k for k, t in table.items() if not t or t[-1] <= horizon]:
            del table[key]
        while len(table) >= MAX_TRACKED:  # all recent: drop the oldest half
            for key in sorted(table, key=lambda k: table[k][-1])[: MAX_TRACKED // 2]:
                del table[key]
