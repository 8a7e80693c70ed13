"""Live calls: an application drives a call over a message channel (the voice-agent path).

A route hands a call to an application with a ``live`` step (the call is answered and waits
``wait_s`` for an application), or opens the connection itself (``connect: ws://...``, see
sip_tts/webhooks). Either way one ``LiveSession`` per call runs the protocol below over a
``Channel``: a WebSocket the application opened (``GET /v1/calls/{id}/stream``, FastAPI)
or one the server opened (``websockets.connect``). Same code, same messages.

Application -> server: JSON text messages, one object each; keys may be combined and are
done in this order: ``audio``, ``clear``, ``text``/``voice``, ``mark``, ``flush``, ``hangup``.

    {"text": "Sure, I can", "flush": false}   a fragment of the running utterance; speech starts
                                             at the first clause boundary (. , ; : ! ? then a
                                             space, or a line break), later clauses follow with
                                             no gap; 30 words without a boundary are cut too
    {"flush": true}                          speak what is buffered now (end of the model's turn)
    {"voice": "anna"}                        the voice for the text from now on (prompts.yaml's)
    {"clear": true}                          barge-in: stop the audio now (the next 20 ms slot is
                                             silence), drop queued audio, synthesis and text
    {"mark": "turn-3"}                       ends the clause; a mark event comes back when every
                                             frame before it has been sent
    {"audio": "pcm16_8k"}                    the caller's audio as binary frames from now on:
                                             pcm16_8k | pcm16_16k | mulaw | off
    {"hangup": true}                         end the call after what is queued has played
                                             (with "clear": true, at once)

Server -> application: JSON events (text) and, when asked, the caller's audio (binary).

    {"event": "start", "call_id", "caller", "dialed", "codec", "audio_formats"}   on attach
    {"event": "speaking", "latency_ms": 182.4, "engine_ms": 170.1}
                                                 the first frame of a speech run went on the
                                                 wire; latency from the message that made the
                                                 text speakable to that frame, and to the
                                                 engine's first audio for it (null: a WAV)
    {"event": "mark", "name": "turn-3"}          (``"cleared": true`` when a clear dropped it)
    {"event": "idle", "underrun_frames": 0}      the last queued frame went out; slots in the run
                                                 that had nothing to send (synthesis behind)
    {"event": "cleared", "dropped_ms": 1240}     the answer to clear
    {"event": "dtmf", "digit": "5"}
    {"event": "hangup", "by": "caller"}          the caller hung up (BYE or CANCEL)
    {"event": "ended", "reason", "utterances", "audio_frames_dropped", "caller_frames_lost"}
                                                 the call is over; the server closes the socket
    {"event": "error", "message", "field"}       a bad message (it is ignored, the call goes on)

    A call we placed (POST /v1/calls with a ``live`` first step) may be attached while it rings;
    its progress comes as events named as its status callbacks, each with ``sip_status`` and
    ``reason`` (sip_tts/outbound.py): ``trying``, ``ringing``, ``answered`` (with ``codec``), or an
    outcome before the answer (``busy``, ``declined``, ``not_found``, ``no_answer``,
    ``unreachable``, ``cancelled``, ``failed``) followed by ``ended``; ``transfer_succeeded`` /
    ``transfer_failed``. What happened before the attach is sent right after ``start``. Text sent
    while it rings is synthesised at once and heard from the answer on. An application that
    closes the stream while it rings, having sent nothing (and no step follows ``live``), leaves
    the call nothing to say: it is cancelled at once (``cancelled`` to the status callback).

    binary: 8-byte header "!BBHI" = version (1), flags (bit 0: silence filled in for lost
    packets), frame number (16 bits, +1 per frame: a gap means frames a slow client lost),
    RTP timestamp of the frame's first sample (8 kHz clock); then 20 ms of audio:
    pcm16_8k 320 bytes, pcm16_16k 640 bytes (16-bit little-endian), mulaw 160 bytes.

Frames are in timestamp order; a packet missing after three later ones arrived is counted
lost and its time filled with silence. Nothing waits on the application: at most 1 s of
audio frames waits for a client that does not read (older ones are dropped and counted),
and 256 unread events close its connection (1008). Text and audio are never logged.
"""

from .caller_audio import FORMATS, CallerFrames, FrameEncoder
from .channel import Channel, StarletteChannel, WebsocketsChannel
from .protocol import Command, parse_audio_message
from .registry import LiveCalls
from .session import LiveSession, SessionBusy

__all__ = ["FORMATS", "CallerFrames", "FrameEncoder", "Channel", "StarletteChannel", "WebsocketsChannel",
           "Command", "parse_audio_message", "LiveCalls", "LiveSession", "SessionBusy"]
