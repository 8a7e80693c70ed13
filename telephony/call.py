"""A call as the media side sees it, and the seam to whatever produces its audio.

``telephony`` knows nothing of TTS: the application hands the server a
``Router`` that, for a new call, returns an ``AudioSource`` (or None for 404).
The source writes G.711 bytes into the call's ``FrameQueue``; the pacer sends
them. Synthesis starts when the INVITE arrives, so audio is usually waiting
by the time the ACK comes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Protocol

from media import FRAME_SECONDS

from .rtp.dtmf import DtmfDigit
from .rtp.pacer import FrameQueue


@dataclass(frozen=True)
class CallInfo:
    """What routing may look at."""

    call_id: str
    dialed: str
    caller: str
    codec: str  # "PCMU" or "PCMA"
    headers: dict[str, str] = field(default_factory=dict)  # the INVITE's headers (first value of each)


class CallControl(Protocol):
    """What a call's audio source may ask of the server beyond its audio (outbound_io.py serves it)."""

    async def transfer(self, call_id: str, target: str, timeout_s: float = 30.0) -> tuple[str, int | None, str]:
        """Blind transfer (REFER); (``succeeded`` | ``failed``, SIP code, reason) once known."""
        ...


class CallHandle:
    """What an audio source can do with its call: queue audio, read digits, wait for playout."""

    def __init__(self, info: CallInfo, queue: FrameQueue, tap: Callable[[bool], None] | None = None) -> None:
        self.info = info
        self.queue = queue
        self.control: CallControl | None = None
        self._digits: asyncio.Queue[DtmfDigit] = asyncio.Queue()
        self._tap = tap  # asks the call table for the caller's audio (or to stop it)
        self._caller_audio: Callable[[int, int, bytes], None] | None = None
        self.end_reason: str | None = None  # set when the call ends (before the source is cancelled)
        self.ended = asyncio.Event()

    def listen(self, on_packet: Callable[[int, int, bytes], None] | None) -> None:
        """Receive the caller's audio packets as ``on_packet(sequence, timestamp, payload)`` (the
        call's codec; DTMF and comfort noise are not passed); None stops it."""
        self._caller_audio = on_packet
        if self._tap is not None:
            self._tap(on_packet is not None)

    def audio_arrived(self, seq: int, timestamp: int, payload: bytes) -> None:
        if self._caller_audio is not None:
            self._caller_audio(seq, timestamp, payload)

    def call_ended(self, reason: str) -> None:
        self.end_reason = reason
        self.ended.set()

    def digit_arrived(self, digit: DtmfDigit) -> None:
        self._digits.put_nowait(digit)

    def take_digit(self) -> str | None:
        """A digit that already arrived, if any (without waiting)."""
        try:
            return self._digits.get_nowait().digit
        except asyncio.QueueEmpty:
            return None

    async def next_digit(self, timeout: float) -> str | None:
        try:
            return (await asyncio.wait_for(self._digits.get(), timeout)).digit
        except asyncio.TimeoutError:
            return None

    async def barge_digit(self, timeout: float) -> str | None:
        """A digit that interrupts the prompt playing now (within ``timeout``), if any."""
        return await self.next_digit(timeout)

    async def wait_digit_or_played(self) -> str | None:
        """Until the queued audio has played (None) or a digit arrives (the digit)."""
        while self.queue.pending:
            digit = await self.next_digit(self.queue.pending * FRAME_SECONDS)
            if digit is not None:
                return digit
        return None

    async def played(self) -> None:
        """Until every queued frame has been sent."""
        while self.queue.pending:
            await asyncio.sleep(self.queue.pending * FRAME_SECONDS)


class AudioSource(Protocol):
    """What plays to a call (the router returns one per call)."""

    handles_digits: bool  # True: the source reacts to digits itself (menus); else ``media.barge_in`` decides
    early_media: bool  # True: played in 183 Session Progress, then the call is refused with 480 (never answered)

    async def run(self, call: CallHandle) -> None:
        """Push the call's audio into ``call.queue``; return when done (the server calls ``finish``)."""


Router = Callable[[CallInfo], "AudioSource | None"]
