"""Digest responses against RFC 7616 §3.9.1's published example, for both algorithms we offer.

The expected values are the RFC's (user "Mufasa", password "Circle of Life", realm
"http-auth@example.org", GET /dir/index.html, nc=00000001, qop=auth), not computed by our
code: ``digest_response`` (what a caller, and our registration client, compute) and the
authenticator's check of an incoming Authorization (what the server does) must both agree
with them. HTTP's method "GET" stands where SIP puts "INVITE"/"REGISTER"; the formula is the same.

A real peer for SHA-256: of the SIP peers on apt here, SIPp (3.6) computes MD5 only, baresip
(libre 1.1) MD5 only; Kamailio 5.6's auth module challenges and verifies SHA-256
(``modparam("auth", "algorithm", "SHA-256")``), so sip_tests/test_digest_peer.py registers our
client with Kamailio under SHA-256 (and MD5). No peer on apt *sends* SHA-256 credentials to
our authenticator; its SHA-256 check is held to the RFC's values here.
"""

from __future__ import annotations

import pytest

from telephony.sip.auth import DigestAuthenticator, digest_response
from telephony.sip.message import Headers, Request

REALM = "http-auth@example.org"
NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_RESPONSE = {  # RFC 7616 §3.9.1, the two Authorization headers
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_client_response_equals_rfc7616(algorithm):
    got = digest_response(algorithm, "Mufasa", REALM, "Circle of Life", "GET", "/dir/index.html",
                          NONCE, "00000001", CNONCE, "auth")
    assert got == RFC7616_RESPONSE[algorithm]


class _IssuedTheRfcNonce(DigestAuthenticator):
    """Our authenticator, as if it had issued the RFC's nonce a second ago (ours are HMAC-signed)."""

    def _nonce_age(self, nonce: str, now: float) -> float | None:
        return 1.0 if nonce == NONCE else None


def rfc_request(algorithm: str, response: str, nc: str = "00000001") -> Request:
    headers = Headers()
    headers.add("Authorization", f'Digest username="Mufasa", realm="{REALM}", uri="/dir/index.html", '
                                 f'algorithm={algorithm}, nonce="{NONCE}", nc={nc}, cnonce="{CNONCE}", '
                                 f'qop=auth, response="{response}", opaque="{OPAQUE}"')
    return Request("GET", "/dir/index.html", headers)


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_authenticator_accepts_the_rfc7616_authorization_and_only_it(algorithm):
    auth = _IssuedTheRfcNonce(REALM, {"Mufasa": "Circle of Life"})
    assert auth.check(rfc_request(algorithm, RFC7616_RESPONSE[algorithm]), now=100.0) == (True, False)
    other = "SHA-256" if algorithm == "MD5" else "MD5"
    fresh = _IssuedTheRfcNonce(REALM, {"Mufasa": "Circle of Life"})
    # the other algorithm's response under this algorithm's name, or one wrong hex digit: refused
    assert fresh.check(rfc_request(algorithm, RFC7616_RESPONSE[other]), now=100.0) == (False, False)
    wrong = RFC7616_RESPONSE[algorithm][:-1] + ("0" if RFC7616_RESPONSE[algorithm][-1] != "0" else "1")
    assert fresh.check(rfc_request(algorithm, wrong), now=100.0) == (False, False)
    # a different password does not verify the RFC's response
    stranger = _IssuedTheRfcNonce(REALM, {"Mufasa": "Circle Of Life"})  # RFC 2617's capital O
    assert stranger.check(rfc_request(algorithm, RFC7616_RESPONSE[algorithm]), now=100.0) == (False, False)
