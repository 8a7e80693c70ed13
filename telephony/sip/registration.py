"""Keep a contact registered at a PBX or trunk (RFC 3261 §10) — sans-IO.

The client sends REGISTER, answers a 401/407 digest challenge (SHA-256 or MD5,
qop=auth), and after a 200 refreshes before the granted expiry runs out
(at half the interval, at least 5 s before it ends). Failures (an error
response, a refused challenge, no response at all) are retried with
exponential back-off from ``retry_min`` up to ``retry_max``. Time comes in as
``now``; ``deadline()`` says when ``handle_timer`` is next due.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

from .. import PRODUCT
from .auth import ALGORITHMS, digest_credentials, parse_digest
from .dialog import new_branch, new_tag
from .message import Headers, Request, Response

log = logging.getLogger(__name__)


@dataclass
class RegistrationConfig:
    registrar_uri: str  # Request-URI, e.g. sip:pbx.example.com
    aor: str  # address of record, e.g. sip:1000@pbx.example.com
    contact: str  # our Contact URI, e.g. sip:1000@192.0.2.10:5060
    username: str = ""
    password: str = ""
    expires: int = 300
    retry_min: float = 5.0
    retry_max: float = 300.0
    user_agent: str = PRODUCT


@dataclass
class Registration:
    config: RegistrationConfig
    via_host: str  # host:port for our Via
    transport: str = "UDP"
    call_id: str = field(default_factory=lambda: secrets.token_hex(10) + "@sip-tts")
    from_tag: str = field(default_factory=new_tag)
    cseq: int = 0
    registered_until: float | None = None
    pending_branch: str | None = None  # the REGISTER in flight
    next_at: float | None = 0.0  # when to send the next REGISTER
    failures: int = 0
    nc: int = 0
    _auth_tries: int = 0
    outbox: list[bytes] = field(default_factory=list)

    @property
    def registered(self) -> bool:
        return self.registered_until is not None

    def deadline(self) -> float | None:
        return self.next_at if self.pending_branch is None else None

    def handle_timer(self, now: float) -> None:
        if self.next_at is not None and now >= self.next_at and self.pending_branch is None:
            self.next_at = None
            self._auth_tries = 0
            self._send(now, None)

    def _send(self, now: float, authorization: str | None) -> None:
        self.cseq += 1
        branch = new_branch()
        self.pending_branch = branch
        h = Headers()
        h.add("Via", f"SIP/2.0/{self.transport} {self.via_host};branch={branch};rport")
        h.add("Max-Forwards", "70")
        h.add("From", f"<{self.config.aor}>;tag={self.from_tag}")
        h.add("To", f"<{self.config.aor}>")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{self.cseq} REGISTER")
        h.add("Contact", f"<{self.config.contact}>")
        h.add("Expires", str(self.config.expires))
        h.add("User-Agent", self.config.user_agent)
        if authorization:
            h.add("Authorization" if not authorization.startswith("Proxy:") else "Proxy-Authorization",
                  authorization.removeprefix("Proxy:"))
        self.outbox.append(Request("REGISTER", self.config.registrar_uri, h).serialize())

    def on_timeout(self, now: float) -> None:
        """The REGISTER transaction got no final response (Timer F)."""
        log.warning("REGISTER to %s: no response", self.config.registrar_uri)
        self._fail(now)

    def on_response(self, resp: Response, now: float) -> None:
        if resp.status < 200:
            return
        self.pending_branch = None
        if 200 <= resp.status < 300:
            granted = self._granted_expiry(resp)
            self.registered_until = now + granted
            self.failures = 0
            self.next_at = now + max(min(granted / 2, granted - 5), 1.0)
            log.info("registered %s at %s for %d s", self.config.aor, self.config.registrar_uri, granted)
            return
        if resp.status in (401, 407) and self._auth_tries < 2 and self.config.username:
            header = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
            authorization = self._answer_challenge(resp.headers.get_all(header))
            if authorization:
                self._auth_tries += 1
                self._send(now, ("Proxy:" if resp.status == 407 else "") + authorization)
                return
        log.warning("REGISTER to %s refused: %d %s", self.config.registrar_uri, resp.status, resp.reason)
        self._fail(now)

    def _fail(self, now: float) -> None:
        self.pending_branch = None
        self.failures += 1
        if self.registered_until is not None and now >= self.registered_until:
            self.registered_until = None
        delay = min(self.config.retry_max, self.config.retry_min * 2 ** (self.failures - 1))
        self.next_at = now + delay

    def _granted_expiry(self, resp: Response) -> int:
        ours = f"<{self.config.contact}>"
        for contact in resp.headers.get_all("Contact"):
            if contact.startswith(ours) or self.config.contact in contact:
                for param in contact.split(";")[1:]:
                    name, _, value = param.partition("=")
                    if name.strip().lower() == "expires" and value.strip().isdigit():
                        return int(value.strip())
        expires = resp.headers.get("Expires")
        if expires and expires.strip().isdigit():
            return int(expires.strip())
        return self.config.expires

    def _answer_challenge(self, challenges: list[str]) -> str | None:
        best = None
        for value in challenges:
            try:
                p = parse_digest(value)
            except ValueError:
                continue
            algorithm = p.get("algorithm", "MD5").upper()
            if algorithm in ALGORITHMS and (best is None or algorithm == "SHA-256"):
                best = (algorithm, p)
        if best is None:
            return None
        algorithm, p = best
        self.nc += 1
        nc = f"{self.nc:08x}"
        cnonce = secrets.token_hex(8)
        qop = "auth" if "auth" in p.get("qop", "auth").split(",") else ""
        return digest_credentials(algorithm, self.config.username, self.config.password, p, "REGISTER",
                                  self.config.registrar_uri, qop, nc, cnonce)
