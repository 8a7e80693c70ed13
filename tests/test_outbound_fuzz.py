"""Fuzzing the outbound UAC (hypothesis): mutated responses and in-dialog requests with random timing.

Whatever arrives, the call must not raise, its timers must stay finite, and once time runs
past every timer (and we hang up) it must reach an outcome with no transaction left.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings, strategies as st

from telephony.sip.auth import DigestAuthenticator
from telephony.sip.message import parse_message, response_for
from telephony.sip.outbound import OutboundCall

from .uacpeer import FAR_CONTACT, answer_sdp, config


def seeds(call: OutboundCall) -> list[bytes]:
    """Real far-end messages for this call's INVITE, to mutate."""
    invite = call.invite
    sdp = answer_sdp(invite)
    far = DigestAuthenticator("trunk.example", {"acct": "pw"})
    ok = [("Contact", f"<{FAR_CONTACT}>"), ("Record-Route", "<sip:edge.example;lr>"),
          ("Content-Type", "application/sdp")]
    out = [response_for(invite, 100).serialize(),
           response_for(invite, 180, to_tag="t1").serialize(),
           response_for(invite, 200, to_tag="t1", extra=ok, body=sdp).serialize(),
           response_for(invite, 200, to_tag="t2", extra=ok, body=sdp).serialize(),
           response_for(invite, 401, to_tag="t1", extra=far.challenges(0.0)).serialize(),
           response_for(invite, 486, to_tag="t1").serialize(),
           response_for(invite, 487, to_tag="t1").serialize()]
    frm = invite.headers.get("From")
    for method, extra, body in [("BYE", "", b""), ("REFER", "Refer-To: <sip:x@y>\r\n", b""),
                                ("NOTIFY", "Event: refer\r\nContent-Type: message/sipfrag\r\n", b"SIP/2.0 200 OK\r\n"),
                                ("INVITE", "", b"")]:
        out.append((f"{method} sip:tts@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK{method}\r\n"
                    f"From: <sip:callee@x>;tag=t1\r\nTo: {frm}\r\nCall-ID: {invite.call_id}\r\nCSeq: 7 {method}\r\n"
                    f"{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body)
    return out


def mutate(data: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    """Insert, delete or overwrite a few bytes at chosen places."""
    out = bytearray(data)
    for kind, pos, junk in ops:
        pos %= len(out) + 1
        if kind == 0:
            out[pos:pos] = junk
        elif kind == 1:
            del out[pos:pos + max(1, len(junk))]
        else:
            out[pos:pos + len(junk)] = junk
    return bytes(out)


op = st.tuples(st.integers(0, 2), st.integers(0, 2000), st.binary(min_size=0, max_size=6))
step = st.tuples(st.integers(0, 10), st.lists(op, max_size=3), st.floats(0, 40), st.booleans())


OUTCOMES_SEEN: set[str] = set()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=8))
def test_outbound_call_survives_mutated_input(steps):
    call = OutboundCall(config(username="acct", password="pw", ring_timeout_s=10.0))
    call.start(0.0)
    corpus = seeds(call)
    now = 0.0
    for index, ops, delay, transfer in steps:
        now += delay
        while (when := call.deadline()) is not None and when <= now:
            call.handle_timer(when)
        data = mutate(corpus[index % len(corpus)], ops)
        call.receive_datagram(data, now, ("198.51.100.7", 5060))
        if transfer and call.phase == "established" and (call.transfer_job is None or call.transfer_job.outcome):
            call.transfer("sip:agent@pbx.example", now)
        for out in call.messages_to_send():
            parse_message(out.data)  # everything we send parses
        when = call.deadline()
        assert when is None or math.isfinite(when)
    call.hangup(now)
    for _ in range(2):
        end = now + 300.0
        while (when := call.deadline()) is not None and when <= end:
            call.handle_timer(when)
            now = when
        call.hangup(now)
        now = end
    assert call.outcome is not None and call.finished, (call.phase, call.outcome)
    OUTCOMES_SEEN.add(call.outcome)
    call.messages_to_send()
    call.next_events()


def test_the_fuzzer_reached_several_outcomes():
    """Guards the fuzz test against silently exercising nothing (runs after it in file order)."""
    if not OUTCOMES_SEEN:
        test_outbound_call_survives_mutated_input()
    assert {"ended", "unreachable"} <= OUTCOMES_SEEN and len(OUTCOMES_SEEN) >= 4, OUTCOMES_SEEN
