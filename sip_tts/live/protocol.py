"""The live-call protocol's messages: what the application sends, what it receives.

Inbound text messages are JSON objects validated here into ``Command`` values; a bad one is
answered with an ``error`` event naming the field and the connection stays open. Outbound
events are JSON objects with an ``event`` key; the caller's audio goes out as binary
messages, each an 8-byte header (``HEADER``) and one 20 ms frame.
"""

from __future__ import annotations

import json
import struct
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .caller_audio import FORMATS

MAX_TEXT = 4096  # characters in one message
VERSION = 1
HEADER = struct.Struct("!BBHI")  # version, flags (bit 0: silence filled in for lost packets), frame number, RTP timestamp
FLAG_FILLED = 0x01


class Command(BaseModel):
    """One message from the application; the keys present say what it asks for (several may
    come together and are done in this order: audio, clear, text, mark, flush, hangup)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=MAX_TEXT, description="a fragment of the running utterance")
    flush: bool = Field(False, description="speak what is buffered now, even without a clause boundary")
    voice: str | None = Field(None, min_length=1, max_length=64, description="the voice for the text from now on")
    clear: bool = Field(False, description="stop what is playing and drop what is queued (barge-in)")
    mark: str | None = Field(None, min_length=1, max_length=128,
                             description="reported back as a mark event when the audio before it has been sent")
    audio: Literal["pcm16_8k", "pcm16_16k", "mulaw", "off"] | None = Field(
        None, description="start (or change, or 'off': stop) the caller's audio as binary frames")
    hangup: bool = Field(False, description="end the call (after what is queued has played, unless clear)")

    @model_validator(mode="after")
    def _something(self) -> "Command":
        if not (self.text is not None or self.flush or self.clear or self.mark is not None or self.audio is not None
                or self.hangup or self.voice is not None):
            raise ValueError("empty command: send text, flush, clear, mark, audio, voice or hangup")
        return self


class BadCommand(ValueError):
    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field


def parse_command(raw: str) -> Command:
    """A text message as a ``Command``; ``BadCommand`` names the field that is wrong."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadCommand("not JSON", None) from None
    if not isinstance(data, dict):
        raise BadCommand("a JSON object is expected", None)
    try:
        return Command.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise BadCommand(f"{field}: {msg}" if field else msg, field) from None


def event(kind: str, /, **fields: object) -> str:
    return json.dumps({"event": kind, **fields}, separators=(",", ":"))


def audio_message(frame_number: int, timestamp: int, filled: bool, payload: bytes) -> bytes:
    return HEADER.pack(VERSION, FLAG_FILLED if filled else 0, frame_number & 0xFFFF, timestamp) + payload


def parse_audio_message(data: bytes) -> tuple[int, int, bool, bytes]:
    """(frame number, RTP timestamp, filled, payload) of a binary message (for clients and tests)."""
    version, flags, number, ts = HEADER.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"audio message version {version}")
    return number, ts, bool(flags & FLAG_FILLED), data[HEADER.size:]


__all__ = ["Command", "BadCommand", "parse_command", "event", "audio_message", "parse_audio_message", "FORMATS",
           "HEADER"]
