"""A talkspurt on the wire: baresip calls a live route, its RTP captured with kernel timestamps.

While the application says nothing the call sends silence; when it pushes text, the first speech
frame goes out as soon as its audio is ready (the call's pacing re-phased, telephony/rtp/pacer.py),
not at the call's next 20 ms slot: it follows the last silence packet by less than a frame, its
RTP timestamp step matches the wall-clock gap (within a frame), it carries the marker bit, the
speech after it runs on without a gap, and baresip's recording correlates with `sip-tts say`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import numpy as np
import websockets

from telephony.rtp.packet import RtpPacket

from .conftest import PEERS, require
from .live_support import assert_clean, envelope_match, next_event, start_live_server, wait_call, ws_url
from .pcap import read_udp
from .test_baresip import read_wav
from .test_live import _say_reference

TEXT = "Thank you for calling. This is a live call."
ROUNDS = 3
SILENCE = b"\xff" * 160  # PCMU silence, what the pacer sends while nothing is queued
BARESIP_RTP = (31200, 31210)


def test_speech_after_silence_leaves_at_once_marked_and_timestamped_by_elapsed_time(tmp_path, capture):
    require("baresip")
    api = start_live_server(tmp_path / "srv")
    try:
        cap = capture(f"udp and dst portrange {BARESIP_RTP[0]}-{BARESIP_RTP[1]}")
        rec_path = tmp_path / "rec.wav"
        call = subprocess.Popen([str(PEERS / "baresip" / "call_and_record.sh"), f"sip:5000@{api.srv.uri_host}",
                                 str(rec_path), "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "BARESIP_RTP_PORTS": f"{BARESIP_RTP[0]}-{BARESIP_RTP[1]}"})
        call_id = wait_call(api, "5000")

        async def application() -> list[tuple[float, dict, dict]]:
            out = []
            async with websockets.connect(ws_url(api, call_id)) as ws:
                await next_event(ws, "start")
                for _ in range(ROUNDS):
                    await asyncio.sleep(0.5)  # silence on the wire, as between an agent's turns
                    sent = time.time()
                    await ws.send(json.dumps({"text": TEXT, "flush": True}))
                    speaking = await next_event(ws, "speaking")
                    out.append((sent, speaking, await next_event(ws, "idle")))
                await asyncio.sleep(0.3)
                await ws.send(json.dumps({"hangup": True}))
                await next_event(ws, "ended")
            return out

        turns = asyncio.run(application())
        _, err = call.communicate(timeout=60)
        assert call.returncode == 0, err[-3000:]
        cap.stop()
        lo, hi = api.srv.rtp_range
        ours = [(p.time, RtpPacket.parse(p.payload)) for p in read_udp(cap.path) if lo <= p.src[1] <= hi]
        ours = [(t, r) for t, r in ours if r.payload_type == 0]
        starts = [i for i, (_, r) in enumerate(ours) if i and r.marker]
        assert len(starts) == ROUNDS, [(i, ours[i][1].payload == SILENCE) for i in starts]
        report = []
        for (sent, speaking, idle), i in zip(turns, starts):
            (t0, before), (t1, first) = ours[i - 1], ours[i]
            gap, step = t1 - t0, (first.timestamp - before.timestamp) % 2**32
            # the talkspurt: speech right after silence, one sequence number on
            assert before.payload == SILENCE and first.payload != SILENCE
            assert (first.sequence - before.sequence) % 65536 == 1
            # the speech after it: every frame in order, 20 ms of timestamp each, no silence slipped in
            run = ours[i:i + 20]
            assert all((b.sequence - a.sequence) % 65536 == 1 and (b.timestamp - a.timestamp) % 2**32 == 160
                       for (_, a), (_, b) in zip(run, run[1:]))
            assert all(r.payload != SILENCE for _, r in run[:10]) and not any(r.marker for _, r in run[1:])
            wire = (t1 - sent) * 1e3 - speaking["engine_ms"]  # first packet on the wire - the engine's first audio
            report.append(dict(gap_ms=round(gap * 1e3, 2), ts_step_ms=step / 8, ts_minus_wall_ms=round(step / 8 - gap * 1e3, 2),
                               server_ms=round(speaking["latency_ms"] - speaking["engine_ms"], 1),
                               wire_after_engine_ms=round(wire, 1)))
            assert idle["underrun_frames"] == 0
            assert step % 16 == 0 and step < 160  # the elapsed grid time (2 ms sub-slots), not a whole frame
        print("talkspurts (gap after the last silence packet, timestamp step, their difference, server's "
              "engine -> first frame, wire's engine -> first packet):", report)
        # Design: the gap is the time since the last silence packet (under 20 ms; exactly 20 ms
        # before the re-phase, the next slot), the timestamp step says the same to the 2 ms sub-slot,
        # and the server sends the frame within a sub-slot of the audio being ready. Stated margins for
        # this shared 2-core host: a loop stall delays a send (not its timestamp), so the timestamp may
        # trail the wall clock by the stall; within a frame (20 ms) for every talkspurt; the gap under
        # a frame and the server's own delay under 10 ms in most of them.
        assert all(abs(r["ts_minus_wall_ms"]) < 20 for r in report), report
        assert sum(r["gap_ms"] < 19.5 for r in report) >= ROUNDS - 1, report
        assert sorted(r["server_ms"] for r in report)[ROUNDS // 2] < 10, report
        assert sorted(r["wire_after_engine_ms"] for r in report)[ROUNDS // 2] < 20, report  # (text sent: an upper bound)
        rec = read_wav(rec_path)
        ref = _say_reference(api.srv, TEXT, tmp_path / "ref.wav")
        corr = envelope_match(rec, ref)
        print(f"baresip's recording vs sip-tts say: envelope correlation {corr:.3f}")
        assert corr > 0.9, corr
        assert_clean(api)
    finally:
        api.srv.stop()
