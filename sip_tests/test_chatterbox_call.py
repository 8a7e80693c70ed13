"""A real call answered by the Chatterbox engine on the CPU (random weights, the real code path)."""

import numpy as np
import pytest

from engine.audio import decode_g711

from .conftest import run_sipp
from .pcap import read_udp
from .rtp_analysis import rtp_streams

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(random_checkpoint):
    return random_checkpoint(2, 128, 1)


def test_call_hears_chatterbox_audio_and_gets_our_bye(start_server, checkpoint, capture, tmp_path):
    engine = (f"engine:\n  kind: chatterbox\n  model_dir: {checkpoint}\n  device: cpu\n  dtype: float32\n"
              f"  max_streams: 2\n  max_tokens: 30\n")
    srv = start_server(extra_yaml=engine, prompts='default: "Hello there."\n')
    cap = capture("udp and dst host 127.0.0.1 and dst port 17400")
    res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", "1000", tmp_path, "-m", "1",
                   "-recv_timeout", "60000", media_port=17400)
    cap.stop()
    assert res.returncode == 0, res.stdout[-2000:] + srv.log_text()[-2000:]
    (stream,) = rtp_streams(read_udp(cap.path)).values()
    # No packet lost; each step one frame, except a frame the pacer had to skip because the host
    # starved it (the CPU engine shares the cores): then the timestamp moves on with the clock.
    # Margin for a loaded 2-core host: at most 2% of frames skipped.
    # Speech that resumes after an underrun (silence sent) is a talkspurt: marked, re-phased, its
    # step the elapsed time in 2 ms sub-slots (telephony/rtp/pacer.py).
    skipped = (stream.ts_span + sum(160 - x for x in stream.talkspurt_steps if x < 160)) // 160 - (stream.packets - 1)
    assert stream.seq_gaps == 0 and 160 in stream.ts_steps and all(x % 160 == 0 for x in stream.ts_steps), stream.ts_steps
    assert all(x % 16 == 0 for x in stream.talkspurt_steps), stream.talkspurt_steps
    assert skipped <= 0.02 * stream.packets, (skipped, stream.packets)
    pcm = decode_g711(stream.payload, "PCMU").astype(np.float64)
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
    loud = np.sqrt((frames ** 2).mean(axis=1)) > 100
    # 30 speech tokens + 3 silence tokens at 40 ms each: about 1.3 s of synthesized audio
    assert 1.0 < loud.sum() * 0.020 < 1.5, loud.sum()
    assert "ended: prompt-done" in srv.log_text()
