"""Online password guessing: the lockout per source and per username, through the sans-IO user agent."""

import pytest

from telephony.sip import IncomingCall
from telephony.sip.auth import DigestAuthenticator
from telephony.sip.lockout import Lockout, LockoutPolicy
from telephony.sip.useragent import UserAgent, UserAgentConfig
from tests.digest_client import authorized_invite, challenge_of
from tests.sipmsg import invite, request

ATTACKER = ("198.51.100.7", 5060)
PBX = ("203.0.113.5", 5060)


def make_ua(silent: bool = False, max_failures: int = 3) -> UserAgent:
    auth = DigestAuthenticator("sip-tts", {"pbx": "s3cret"}, ("SHA-256", "MD5"),
                               lockout=Lockout(LockoutPolicy(max_failures, 10.0, 30.0)), lockout_silent=silent)
    return UserAgent(UserAgentConfig("192.0.2.1", 5060), authenticator=auth)


class Caller:
    """One source: asks for a challenge, then answers it with a password."""

    def __init__(self, ua: UserAgent, addr: tuple[str, int]) -> None:
        self.ua, self.addr, self.n = ua, addr, 0

    def attempt(self, username: str, password: str, now: float) -> str:
        self.n += 1
        call_id = f"{self.addr[0]}-{self.n}"
        self.ua.receive_datagram(invite(call_id=call_id, user="2000", via_host=f"{self.addr[0]}:5060"),
                                 self.addr, now)
        out = self.ua.datagrams_to_send()
        if not out:
            return "silent"
        first = out[-1][0]
        if not first.startswith(b"SIP/2.0 401 "):
            return first.split(b"\r\n", 1)[0].decode()
        self.ua.receive_datagram(authorized_invite(challenge_of(first), username, password, call_id,
                                                   via_host=f"{self.addr[0]}:5060"), self.addr, now)
        got = [d.split(b"\r\n", 1)[0].decode() for d, _ in self.ua.datagrams_to_send()]
        events = self.ua.next_events()
        if any(isinstance(e, IncomingCall) for e in events):
            self.ua.reject(call_id, 486, now)  # the call itself does not matter here
            self.ua.datagrams_to_send()
            return "authenticated"
        return got[-1] if got else "silent"


def test_a_guessing_source_is_locked_out_the_pbx_is_not_and_the_lockout_expires():
    ua = make_ua()
    attacker, pbx = Caller(ua, ATTACKER), Caller(ua, PBX)
    got = [attacker.attempt("pbx", f"guess{i}", float(i) * 0.01) for i in range(5)]
    assert got[:3] == ["SIP/2.0 401 Unauthorized"] * 3
    assert got[3:] == ["SIP/2.0 403 Forbidden"] * 2  # the 4th failure locks; then even the challenge is refused
    assert attacker.attempt("pbx", "s3cret", 1.0) == "SIP/2.0 403 Forbidden"  # the right password too
    assert pbx.attempt("pbx", "s3cret", 1.0) == "authenticated"  # another source is unaffected
    assert ua.authenticator.lockout.lockouts == 1
    ua.receive_datagram(request("OPTIONS", via_host=f"{ATTACKER[0]}:5060"), ATTACKER, 1.0)
    assert ua.datagrams_to_send()[-1][0].startswith(b"SIP/2.0 403 Forbidden")  # every request of it
    ua.receive_datagram(request("OPTIONS", via_host=f"{PBX[0]}:5060"), PBX, 1.0)
    assert ua.datagrams_to_send()[-1][0].startswith(b"SIP/2.0 200 OK")
    assert attacker.attempt("pbx", "s3cret", 31.0) == "authenticated"  # expired on its own (lockout 30 s)


def test_unknown_usernames_are_treated_exactly_like_wrong_passwords():
    results = {}
    for name in ("pbx", "nosuchuser"):
        ua = make_ua()
        results[name] = [Caller(ua, ATTACKER).attempt(name, "wrong", i * 0.01) for i in range(5)]
    assert results["pbx"] == results["nosuchuser"]


def test_a_username_guessed_from_many_sources_locks_each_further_failing_source_at_once():
    ua = make_ua()
    sources = [Caller(ua, (f"198.51.100.{i}", 5060)) for i in range(1, 7)]
    first = [s.attempt("pbx", "wrong", 0.1 * i) for i, s in enumerate(sources[:3])]
    assert first == ["SIP/2.0 401 Unauthorized"] * 3  # one failure each: no source over 3
    assert sources[3].attempt("pbx", "wrong", 1.0) == "SIP/2.0 403 Forbidden"  # the user is over 3
    assert sources[3].attempt("pbx", "s3cret", 1.1) == "SIP/2.0 403 Forbidden"
    assert Caller(ua, PBX).attempt("pbx", "s3cret", 1.2) == "authenticated"  # right answers still pass


def test_silent_lockout_sends_nothing():
    ua = make_ua(silent=True)
    attacker = Caller(ua, ATTACKER)
    got = [attacker.attempt("pbx", "wrong", i * 0.01) for i in range(5)]
    assert got == ["SIP/2.0 401 Unauthorized"] * 3 + ["silent"] * 2


@pytest.mark.parametrize("spread", [0.0, 11.0])
def test_the_window_slides(spread):
    """Failures older than the window (10 s) no longer count."""
    ua = make_ua()
    attacker = Caller(ua, ATTACKER)
    got = [attacker.attempt("pbx", "wrong", i * spread) for i in range(4)]
    assert got[-1] == ("SIP/2.0 403 Forbidden" if spread == 0.0 else "SIP/2.0 401 Unauthorized")
