"""The application's side of a placed call (sip_tts/outbound.py's ``Originator``) over the real
outbound I/O layer and call table, with the socket replaced by a send that fails at once: the
outcome then comes inside ``place`` itself (the server's pump runs there), before ``place`` has
returned the call id. It must still find the call's record: the status callback gets
``initiated`` then ``unreachable``, and nothing is left behind (records, the live registry's
``sip_tts_live_placed_pending``, RTP ports)."""

from __future__ import annotations

import asyncio

from config.loader import load_prompts
from config.schema import ServerConfig
from sip_tts.live import LiveCalls
from sip_tts.outbound import CallOrder, Originator
from sip_tts.script import Speech
from telephony.outbound_io import OutboundIO

from .test_calls import Harness


def _placed_pending(live: LiveCalls) -> float:
    (gauge,) = [m for m in live.collect() if m.name == "sip_tts_live_placed_pending"]
    return gauge.samples[0].value


def test_an_outcome_within_place_finds_the_record_and_leaves_nothing(tmp_path):
    (tmp_path / "prompts.yaml").write_text("routes: []\n")
    speech = Speech(load_prompts(tmp_path / "prompts.yaml"), engine=None, default_voice=None,  # type: ignore[arg-type]
                    cache=None)  # type: ignore[arg-type]
    h = Harness()
    sent: list[bytes] = []

    def send(data: bytes, addr, transport: str) -> bool:  # as the server's: False when the socket refused it
        sent.append(data)
        return False

    async def connect(addr) -> None:
        raise AssertionError("a UDP call connects nothing")

    async def scenario() -> tuple[str, list[dict], Originator, LiveCalls]:
        loop = asyncio.get_running_loop()
        io: OutboundIO

        def pump() -> None:  # the server's pump (telephony/server.py), on the harness's table
            for _ in range(100):
                moved = io.dispatch(h.now)
                if not moved and not h.pump():
                    io.flush()
                    if not io.calls.has_events:
                        break

        io = OutboundIO(h.table, 5060, send, connect, loop, pump)
        live = LiveCalls(lambda: h.table.calls, lambda call_id, reason: True)
        originator = Originator(ServerConfig(), io, lambda: speech, live=live)
        outcomes: list[str] = []
        io.listeners.append(lambda ev: outcomes.append(ev.kind))
        call_id = await originator.place(CallOrder(to="sip:callee@127.0.0.1:5999", steps=["live"],
                                                   status_callback="http://127.0.0.1:9/status"))
        assert outcomes == ["unreachable"]  # (within place: it had not returned yet)
        posts = []
        while not originator._posts.empty():
            url, body = originator._posts.get_nowait()
            assert url == "http://127.0.0.1:9/status" and body["call_id"] == call_id
            posts.append(body)
        await originator.close()
        return call_id, posts, originator, live

    call_id, posts, originator, live = asyncio.run(scenario())
    assert len(sent) == 1 and sent[0].startswith(b"INVITE sip:callee@127.0.0.1:5999 SIP/2.0")
    assert [p["event"] for p in posts] == ["initiated", "unreachable"], posts
    assert posts[0]["to"] == "sip:callee@127.0.0.1:5999" and posts[1]["sip_status"] == 503
    assert originator.records == {} and _placed_pending(live) == 0
    h.bound(call_id)  # (the RTP socket's bind completes after the end: the port goes back then)
    assert call_id not in h.table.calls and h.table.ports.in_use == 0
