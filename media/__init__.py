"""The audio on the wire, as both sides see it: 8 kHz G.711 in 20 ms frames.

``telephony/`` (RTP pacing, DTMF clock, RTCP counts) and ``engine/`` (encoding, the prompt
cache's frames) both import these; neither imports the other.
"""

SAMPLE_RATE = 8000  # G.711 and the RTP clock of PCMU/PCMA and telephone-event
FRAME_SECONDS = 0.020  # one RTP packet's audio (ptime 20)
FRAME_SAMPLES = 160  # samples per frame = bytes per G.711 frame
FRAMES_PER_SECOND = 50
SILENCE = {"PCMU": 0xFF, "PCMA": 0xD5}  # the G.711 byte of digital silence, per codec


def silence(codec: str, samples: int = FRAME_SAMPLES) -> bytes:
    """``samples`` of G.711 silence (default: one frame)."""
    return bytes([SILENCE[codec]]) * samples
