"""SRTP/SRTCP (RFC 3711) with keys exchanged in the SDP (SDES, RFC 4568), through pylibsrtp.

A caller offering ``RTP/SAVP`` puts ``a=crypto:<tag> <suite> inline:<key||salt>`` lines in
its SDP; we pick the first suite we support, answer with the same tag and suite and a
fresh key of ours, and protect what we send with our key, unprotect what we receive with
theirs. AES_CM_128_HMAC_SHA1_80 and _32 (the suites every SDES peer has).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

import pylibsrtp

SUITES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
KEY_LEN = 30  # 16-byte master key + 14-byte master salt
MODES = ("off", "optional", "required")


class SrtpError(ValueError):
    """A packet that fails authentication or replay checks, or a crypto line we cannot use."""


@dataclass(frozen=True)
class Crypto:
    """One ``a=crypto`` attribute: tag, suite and the inline master key||salt."""

    tag: int
    suite: str
    key: bytes

    @classmethod
    def parse(cls, value: str) -> "Crypto":
        """``1 AES_CM_128_HMAC_SHA1_80 inline:BASE64[|lifetime][|MKI:len] [session params]``."""
        parts = value.split()
        if len(parts) < 3 or not parts[0].isdigit() or not parts[2].startswith("inline:"):
            raise SrtpError(f"bad crypto attribute {value[:60]!r}")
        key_params = parts[2][len("inline:"):].split("|")
        if len(key_params) > 2 or (len(key_params) == 2 and ":" in key_params[1]):
            raise SrtpError("MKI is not supported")  # one key per direction, no MKI
        try:
            key = base64.b64decode(key_params[0] + "=" * (-len(key_params[0]) % 4), validate=True)
        except ValueError:
            raise SrtpError("crypto key is not base64") from None
        if len(key) != KEY_LEN:
            raise SrtpError(f"crypto key of {len(key)} bytes, not {KEY_LEN}")
        if len(parts) > 3:
            raise SrtpError("session parameters are not supported")
        return cls(int(parts[0]), parts[1].upper(), key)

    def attribute(self) -> str:
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


def choose(values: list[str]) -> Crypto | None:
    """The first offered crypto attribute we can use (offer order is the caller's preference)."""
    for value in values:
        try:
            crypto = Crypto.parse(value)
        except SrtpError:
            continue
        if crypto.suite in SUITES:
            return crypto
    return None


class SrtpContext:
    """One call's two SRTP sessions: ours (outbound) and the caller's (inbound), RTP and RTCP."""

    def __init__(self, theirs: Crypto, ours: Crypto | None = None) -> None:
        self.theirs = theirs
        self.ours = ours or Crypto(theirs.tag, theirs.suite, secrets.token_bytes(KEY_LEN))
        profile = SUITES[theirs.suite]
        self._tx = pylibsrtp.Session(pylibsrtp.Policy(key=self.ours.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                                      srtp_profile=profile))
        self._rx = pylibsrtp.Session(pylibsrtp.Policy(key=theirs.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                                                      srtp_profile=profile))

    def protect(self, rtp: bytes) -> bytes:
        return self._tx.protect(rtp)

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        return self._tx.protect_rtcp(rtcp)

    def unprotect(self, srtp: bytes) -> bytes:
        try:
            return self._rx.unprotect(srtp)
        except pylibsrtp.Error as exc:
            raise SrtpError(str(exc)) from None

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        try:
            return self._rx.unprotect_rtcp(srtcp)
        except pylibsrtp.Error as exc:
            raise SrtpError(str(exc)) from None

    def rekeyed(self, theirs: Crypto) -> "SrtpContext":
        """A re-offer with another key of theirs: a new inbound session; our outbound session goes on
        (restarting it with the same key would restart its rollover counter and reuse keystream)."""
        if theirs == self.theirs:
            return self
        if theirs.suite != self.ours.suite:
            return SrtpContext(theirs)  # another suite: a fresh key of ours too
        other = SrtpContext.__new__(SrtpContext)
        # (the answer names the tag the re-offer's chosen line has)
        other.theirs, other.ours, other._tx = theirs, Crypto(theirs.tag, self.ours.suite, self.ours.key), self._tx
        other._rx = pylibsrtp.Session(pylibsrtp.Policy(key=theirs.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                                                       srtp_profile=SUITES[theirs.suite]))
        return other
