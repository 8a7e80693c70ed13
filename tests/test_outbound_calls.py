"""The outbound-call registry: dispatch by Call-ID, one timer heap, limits checked before any INVITE."""

from __future__ import annotations

import pytest

from telephony.sip.message import parse_message, response_for
from telephony.sip.outbound_calls import CallRefused, OutboundCalls, TrunkLimits

from .uacpeer import config, ok


def invites(calls: OutboundCalls):
    return [m for m in (parse_message(s.data) for s in calls.messages_to_send()) if m.method == "INVITE"]


def test_dispatch_timers_and_forgetting_finished_calls():
    calls = OutboundCalls()
    a = calls.place(config(call_id="a@x", ring_timeout_s=5.0), 0.0)
    b = calls.place(config(call_id="b@x", ring_timeout_s=60.0), 0.1)
    inv_a, inv_b = invites(calls)
    assert (inv_a.call_id, inv_b.call_id) == ("a@x", "b@x")
    assert calls.deadline() == pytest.approx(0.5)  # a's Timer A
    calls.receive(parse_message(response_for(inv_a, 180, to_tag="t").serialize()), 0.2)
    calls.receive(parse_message(response_for(inv_b, 486, to_tag="t").serialize()), 0.3)
    assert [(e.call_id, e.kind) for e in calls.next_events()] == [("a@x", "ringing"), ("b@x", "busy")]
    (ack,) = [parse_message(s.data) for s in calls.messages_to_send()]
    assert (ack.method, ack.call_id) == ("ACK", "b@x")
    assert calls.active() == 1 and calls.owns("b@x")  # b keeps absorbing 486 retransmissions (Timer D)
    # b's Timer A entry at 0.6 is stale now; the next real deadline is a's ring timeout at 5.0
    assert calls.deadline() == pytest.approx(5.0)
    calls.handle_timer(5.0)
    (cancel,) = [parse_message(s.data) for s in calls.messages_to_send()]
    assert cancel.method == "CANCEL" and cancel.call_id == "a@x"
    calls.receive(parse_message(response_for(inv_a, 487, to_tag="t").serialize()), 5.1)
    assert [(e.call_id, e.kind) for e in calls.next_events()] == [("a@x", "no_answer")]
    while (when := calls.deadline()) is not None:
        calls.handle_timer(when)
    assert calls.calls == {} and not calls.owns("a@x") and a.finished and b.finished


def test_answered_call_stays_until_hangup():
    calls = OutboundCalls()
    calls.place(config(call_id="c@x"), 0.0)
    (inv,) = invites(calls)
    call = calls.calls["c@x"]
    ok(call, inv, 0.5)  # through the call directly, then the registry is told
    calls.receive(parse_message(response_for(inv, 200, to_tag="far1").serialize()), 0.6)  # a retransmission
    calls.hangup("c@x", 10.0)
    methods = [parse_message(s.data).method for s in calls.messages_to_send()]
    assert methods[-1] == "BYE"
    while (when := calls.deadline()) is not None:
        calls.handle_timer(when)
    assert calls.calls == {}


def test_limits_refuse_before_any_invite():
    calls = OutboundCalls(max_calls=4)
    limits = TrunkLimits(calls_per_second=2, max_concurrent=2)
    calls.place(config(call_id="1@x"), 0.0, "trunk1", limits)
    calls.place(config(call_id="2@x"), 0.1, "trunk2", TrunkLimits(calls_per_second=1))
    with pytest.raises(CallRefused) as refused:
        calls.place(config(call_id="3@x"), 0.2, "trunk2", TrunkLimits(calls_per_second=1))
    assert refused.value.reason == "trunk_cps"
    calls.place(config(call_id="4@x"), 0.3, "trunk1", limits)
    with pytest.raises(CallRefused) as refused:
        calls.place(config(call_id="5@x"), 2.0, "trunk1", limits)
    assert refused.value.reason == "trunk_concurrent"
    with pytest.raises(CallRefused) as refused:
        calls.place(config(call_id="6@x"), 2.0, "trunk3", None, inbound_active=0)
        calls.place(config(call_id="7@x"), 2.0, "trunk3", None)
    assert refused.value.reason == "max_calls"
    with pytest.raises(CallRefused, match="max_calls"):
        OutboundCalls(max_calls=2).place(config(), 0.0, inbound_active=2)
    assert sorted(calls.calls) == ["1@x", "2@x", "4@x", "6@x"]
    assert len(invites(calls)) == 4  # refused calls sent nothing
    registry = OutboundCalls()
    registry.place(config(call_id="dup"), 0.0)
    with pytest.raises(ValueError, match="already in use"):
        registry.place(config(call_id="dup"), 0.0)


def test_cps_window_slides():
    calls = OutboundCalls()
    limits = TrunkLimits(calls_per_second=1)
    calls.place(config(call_id="a"), 0.0, "t", limits)
    with pytest.raises(CallRefused):
        calls.place(config(call_id="b"), 0.99, "t", limits)
    calls.place(config(call_id="c"), 1.0, "t", limits)
