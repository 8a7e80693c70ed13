"""Digest authentication of incoming INVITEs (RFC 3261 §22, RFC 8760: SHA-256 and MD5).

Sans-IO. Nonces are stateless: ``time.random.hmac`` signed with a per-process
secret, so any nonce we issued can be checked without storing it and expires
after ``nonce_ttl`` (an expired one gets a fresh challenge with ``stale=true``).
Replays are refused: with qop=auth every use of a nonce must carry a larger
nonce-count (nc) than the last one we accepted for that nonce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from .message import Request, split_commas

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


@dataclass
class DigestAuthenticator:
    realm: str
    users: dict[str, str]  # username → password
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    nonce_ttl: float = 300.0
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
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
        for value in req.headers.get_all("Authorization"):
            try:
                p = parse_digest(value)
            except ValueError:
                continue
            if p.get("realm") != self.realm:
                continue
            algorithm = p.get("algorithm", "MD5").upper()
            if algorithm not in self.algorithms or p.get("username") not in self.users:
                return False, False
            nonce = p.get("nonce", "")
            age = self._nonce_age(nonce, now)
            if age is None or age < -5:
                return False, False
            qop, nc, cnonce = p.get("qop", ""), p.get("nc", ""), p.get("cnonce", "")
            if qop != "auth" or not cnonce or len(nc) != 8:
                return False, False
            try:
                count = int(nc, 16)
            except ValueError:
                return False, False
            expected = digest_response(algorithm, p["username"], self.realm, self.users[p["username"]],
                                       req.method, p.get("uri", ""), nonce, nc, cnonce, qop)
            if not hmac.compare_digest(expected, p.get("response", "")):
                return False, False
            if age > self.nonce_ttl:
                return False, True
            if count <= self._nc_seen.get(nonce, 0):
                return False, False  # a replayed nonce-count
            self._nc_seen[nonce] = count
            if len(self._nc_seen) > 50000:
                self._prune(now)
            return True, False
        return False, False

    def _prune(self, now: float) -> None:
        self._nc_seen = {n: c for n, c in self._nc_seen.items()
                         if (age := self._nonce_age(n, now)) is not None and age <= self.nonce_ttl}
