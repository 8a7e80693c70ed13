"""Digest authentication of incoming INVITEs (RFC 3261 §22, RFC 8760: SHA-256 and MD5).

Sans-IO. Nonces are stateless: ``time.random.hmac`` signed with a per-process
secret, so any nonce we issued can be checked without storing it and expires
after ``nonce_ttl`` (an expired one gets a fresh challenge with ``stale=true``).
Replays are refused: with qop=auth every use of a nonce must carry a larger
nonce-count (nc) than the last one we accepted for that nonce. Wrong answers are
counted by ``lockout`` (see lockout.py); an unknown username is checked against a
dummy password, so it costs and answers exactly as a known one with a wrong password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Literal

from .lockout import Lockout
from .message import Request, split_commas

Outcome = Literal["ok", "stale", "missing", "failed"]


@dataclass(frozen=True)
class Verdict:
    """What the credentials of a request amount to; ``username`` is what the request claimed."""

    outcome: Outcome
    username: str = ""

ALGORITHMS = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}


def _h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode()).hexdigest()


def parse_digest(value: str) -> dict[str, str]:
    """``Digest username="a", realm="r", ...`` → {"username": "a", ...} (keys lower-case)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"not a Digest credential: {scheme!r}")
    params: dict[str, str] = {}
    for part in split_commas(rest):
        name, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"bad Digest parameter {part!r}")
        params[name.strip().lower()] = val.strip().strip('"')
    return params


def digest_response(algorithm: str, username: str, realm: str, password: str, method: str, uri: str,
                    nonce: str, nc: str, cnonce: str, qop: str = "auth") -> str:
    """The client's ``response`` value (what a caller computes; used by our tests too)."""
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def digest_credentials(algorithm: str, username: str, password: str, params: dict[str, str], method: str,
                       uri: str, qop: str, nc: str, cnonce: str) -> str:
    """A client's ``Digest ...`` credentials answering the challenge ``params`` (RFC 7616 §3.4;
    ``qop`` empty: the RFC 2069 form, without nonce count). Our UAC and registration client share it."""
    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    if qop:
        response = digest_response(algorithm, username, realm, password, method, uri, nonce, nc, cnonce, qop)
        extra = f', qop={qop}, nc={nc}, cnonce="{cnonce}"'
    else:
        ha1, ha2 = _h(algorithm, f"{username}:{realm}:{password}"), _h(algorithm, f"{method}:{uri}")
        response, extra = _h(algorithm, f"{ha1}:{nonce}:{ha2}"), ""
    opaque = f', opaque="{params["opaque"]}"' if "opaque" in params else ""
    return (f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}{extra}{opaque}')


@dataclass
class DigestAuthenticator:
    realm: str
    users: dict[str, str]  # username → password
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    nonce_ttl: float = 300.0
    lockout: Lockout | None = None  # set: sources guessing passwords are locked out
    lockout_silent: bool = False  # locked-out sources get no answer (else 403)
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _dummy: str = field(default_factory=lambda: secrets.token_hex(16))  # the password of unknown users
    _nc_seen: dict[str, int] = field(default_factory=dict)  # nonce → highest nc accepted

    def _sign(self, stamp: str, salt: str) -> str:
        return hmac.new(self._secret, f"{stamp}.{salt}".encode(), hashlib.sha256).hexdigest()[:24]

    def new_nonce(self, now: float) -> str:
        stamp = f"{now:.3f}"
        salt = secrets.token_hex(6)
        return base64.urlsafe_b64encode(f"{stamp}.{salt}.{self._sign(stamp, salt)}".encode()).decode().rstrip("=")

    def _nonce_age(self, nonce: str, now: float) -> float | None:
        """Seconds since we issued ``nonce``, or None if we did not issue it."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4)).decode()
            stamp, salt, sig = raw.rsplit(".", 2)  # the stamp has a dot of its own
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(sig, self._sign(stamp, salt)):
            return None
        try:
            return now - float(stamp)
        except ValueError:
            return None

    def challenges(self, now: float, stale: bool = False) -> list[tuple[str, str]]:
        """WWW-Authenticate headers, one per algorithm, strongest first (RFC 8760 §2.4)."""
        nonce = self.new_nonce(now)
        extra = ", stale=true" if stale else ""
        return [("WWW-Authenticate", f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={alg}, '
                                     f'qop="auth"{extra}') for alg in self.algorithms]

    def check(self, req: Request, now: float) -> tuple[bool, bool]:
        """(authorised, stale): stale means a well-formed answer to an expired nonce."""
        verdict = self.judge(req, now)
        return verdict.outcome == "ok", verdict.outcome == "stale"

    def judge(self, req: Request, now: float) -> Verdict:
        """ok, stale (right answer, expired nonce), missing (no credentials for our realm) or failed."""
        for value in req.headers.get_all("Authorization"):
            try:
                p = parse_digest(value)
            except ValueError:
                continue
            if p.get("realm") != self.realm:
                continue
            username = p.get("username", "")
            algorithm = p.get("algorithm", "MD5").upper()
            nonce = p.get("nonce", "")
            qop, nc, cnonce = p.get("qop", ""), p.get("nc", ""), p.get("cnonce", "")
            known = username in self.users
            # The digest is computed for every answer, known user or not: same cost, same outcome.
            expected = digest_response(algorithm if algorithm in ALGORITHMS else "MD5", username, self.realm,
                                       self.users[username] if known else self._dummy,
                                       req.method, p.get("uri", ""), nonce, nc, cnonce, qop)
            right = hmac.compare_digest(expected, p.get("response", "")) and known
            age = self._nonce_age(nonce, now)
            try:
                count = int(nc, 16)
            except ValueError:
                count = -1
            if (not right or algorithm not in self.algorithms or age is None or age < -5 or qop != "auth"
                    or not cnonce or len(nc) != 8 or count < 0):
                return Verdict("failed", username)
            if age > self.nonce_ttl:
                return Verdict("stale", username)
            if count <= self._nc_seen.get(nonce, 0):
                return Verdict("failed", username)  # a replayed nonce-count
            self._nc_seen[nonce] = count
            if len(self._nc_seen) > 50000:
                self._prune(now)
            return Verdict("ok", username)
        return Verdict("missing")

    def _prune(self, now: float) -> None:
        self._nc_seen = {n: c for n, c in self._nc_seen.items()
                         if (age := self._nonce_age(n, now)) is not None and age <= self.nonce_ttl}
