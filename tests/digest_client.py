"""A digest-authenticating caller for tests: it computes real RFC 2617/8760 responses to our challenges."""

from __future__ import annotations

import re
import secrets

from telephony.sip.auth import digest_response
from tests.sipmsg import invite


def challenge_of(response: bytes, algorithm: str = "MD5") -> dict[str, str]:
    """realm and nonce of the WWW-Authenticate for ``algorithm`` in a 401."""
    for line in response.split(b"\r\n"):
        text = line.decode()
        if text.lower().startswith("www-authenticate:") and f"algorithm={algorithm}" in text:
            return dict(re.findall(r'(\w+)="([^"]*)"', text))
    raise AssertionError(f"no {algorithm} challenge in {response[:300]!r}")


def authorized_invite(challenge: dict[str, str], username: str, password: str, call_id: str,
                      algorithm: str = "MD5", host: str = "127.0.0.1", via_host: str = "127.0.0.1:5060",
                      cseq: int = 2) -> bytes:
    """The INVITE again, with an Authorization answering ``challenge`` with ``password``."""
    uri = "sip:2000@192.0.2.1:5060"
    cnonce = secrets.token_hex(8)
    nc = "00000001"
    response = digest_response(algorithm, username, challenge["realm"], password, "INVITE", uri,
                               challenge["nonce"], nc, cnonce)
    auth = (f'Authorization: Digest username="{username}", realm="{challenge["realm"]}", '
            f'nonce="{challenge["nonce"]}", uri="{uri}", response="{response}", algorithm={algorithm}, '
            f'qop=auth, nc={nc}, cnonce="{cnonce}"\r\n')
    return invite(call_id=call_id, cseq=cseq, extra=auth, user="2000", host=host, via_host=via_host)
