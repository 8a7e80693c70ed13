"""Wiring of what faces the internet: digest auth with its lockout (config in, /metrics out), TLS."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.core import CounterMetricFamily

from config.schema import AuthSettings, TlsConfig, parse_hostport
from telephony.tls import TlsSettings
from telephony.sip.auth import DigestAuthenticator
from telephony.sip.lockout import Lockout, LockoutPolicy


def build_authenticator(cfg: AuthSettings) -> DigestAuthenticator:
    policy = LockoutPolicy(cfg.max_failures, cfg.failure_window_s, cfg.lockout_s)
    return DigestAuthenticator(cfg.realm, dict(cfg.users), tuple(cfg.algorithms), cfg.nonce_ttl_s,
                               lockout=Lockout(policy), lockout_silent=cfg.lockout_response == "silent")


class _LockoutCollector:
    def __init__(self, lockout: Lockout) -> None:
        self.lockout = lockout

    def collect(self):
        yield CounterMetricFamily("sip_tts_auth_failures", "failed digest answers (wrong password, unknown "
                                  "user, bad or replayed nonce)", value=self.lockout.failures)
        yield CounterMetricFamily("sip_tts_auth_lockouts", "sources locked out for guessing passwords",
                                  value=self.lockout.lockouts)


def register_lockout_metrics(registry, authenticator: DigestAuthenticator | None) -> None:
    """Add the lockout counters to /metrics (nothing when auth is off)."""
    if authenticator is not None and authenticator.lockout is not None:
        registry.register(_LockoutCollector(authenticator.lockout))


def tls_settings(cfg: TlsConfig | None, source: Path | None = None) -> TlsSettings | None:
    """The TLS listener's settings; relative file names are relative to server.yaml (``source``)."""
    if cfg is None:
        return None

    def path(p: Path) -> str:
        return str(p if p.is_absolute() or source is None else source.parent / p)

    host, port = parse_hostport(cfg.listen)
    return TlsSettings(host, port, path(cfg.cert_file), path(cfg.key_file),
                       path(cfg.ca_file) if cfg.ca_file else None, cfg.verify_client)
