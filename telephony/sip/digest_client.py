"""Answering a digest challenge as a client (RFC 3261 §22.2-22.3, RFC 7616/8760: SHA-256, MD5).

Sans-IO and separate from the REGISTER client so outbound INVITEs, CANCEL-free
re-tries and in-dialog requests share one implementation. The nonce count (nc)
is kept per nonce: it starts at 1 for a new nonce and grows with every request
that reuses it, as qop=auth requires. Challenges are remembered per realm: a request
challenged by a proxy (407) and then by the far end (401) is retried with both
credentials (§22.3), each computed afresh with its next nonce count. A second challenge for a realm we just
answered means the credentials are wrong, unless it says ``stale=true``
(the nonce expired): then one more answer is allowed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .auth import ALGORITHMS, digest_credentials, parse_digest
from .message import Response

PREFERENCE = ("SHA-256", "MD5")  # strongest first (RFC 8760 §2.4)


@dataclass
class DigestClient:
    username: str
    password: str
    _nc: dict[str, int] = field(default_factory=dict)  # nonce → last nonce count used
    _answered: set[str] = field(default_factory=set)  # realms answered for the current request
    _challenges: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (header, realm) → params

    def authorize(self, response: Response, method: str, uri: str) -> list[tuple[str, str]] | None:
        """Authorization / Proxy-Authorization headers for the retried request: the answer to
        this challenge plus the credentials of realms answered before (a proxy's, say).

        Returns None when the challenge cannot or must not be answered (no usable
        algorithm, no credentials, or the same realm challenged again without stale).
        """
        if not self.username:
            return None
        if response.status == 401:
            challenge_name, answer_name = "WWW-Authenticate", "Authorization"
        elif response.status == 407:
            challenge_name, answer_name = "Proxy-Authenticate", "Proxy-Authorization"
        else:
            return None
        best: dict[str, dict[str, str]] = {}  # realm → the strongest challenge for it
        for value in response.headers.get_all(challenge_name):
            try:
                params = parse_digest(value)
            except ValueError:
                continue
            algorithm = params.get("algorithm", "MD5").upper()
            if algorithm not in ALGORITHMS:
                continue
            params["algorithm"] = algorithm
            realm = params.get("realm", "")
            held = best.get(realm)
            if held is None or PREFERENCE.index(algorithm) < PREFERENCE.index(held["algorithm"]):
                best[realm] = params
        if not best:
            return None
        for realm, params in best.items():
            stale = params.get("stale", "").lower() == "true"
            if realm in self._answered and not stale:
                return None  # our answer was refused: wrong credentials
        for realm, params in best.items():
            self._answered.add(realm)
            self._challenges[(answer_name, realm)] = params
        return self.headers_for(method, uri)

    def headers_for(self, method: str, uri: str) -> list[tuple[str, str]]:
        """Credentials for every realm challenged so far, for a new request to ``uri``."""
        return [(name, self.credentials(params, method, uri)) for (name, _), params in self._challenges.items()]

    def credentials(self, params: dict[str, str], method: str, uri: str) -> str:
        """One ``Digest ...`` credentials value for a parsed challenge."""
        algorithm = params.get("algorithm", "MD5").upper()
        nonce = params.get("nonce", "")
        qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
        if qops and "auth" not in qops:
            raise ValueError(f"unsupported qop {params.get('qop')!r}")
        nc, cnonce = "", ""
        if qops:
            count = self._nc.get(nonce, 0) + 1
            self._nc[nonce] = count
            nc, cnonce = f"{count:08x}", secrets.token_hex(8)
        return digest_credentials(algorithm, self.username, self.password, params, method, uri,
                                  "auth" if qops else "", nc, cnonce)

    def reset(self) -> None:
        """A new request (not a retry of a challenged one): realms may be answered again."""
        self._answered.clear()
