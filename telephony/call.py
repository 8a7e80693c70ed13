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

from .rtp.dtmf import DtmfDigit, Rfc4733Detector
from .rtp.rtcp import ReceiveStats, ReportBlock
from .rtp.pacer import FrameQueue, RtpSender
from .sip.events import IncomingCall
from .sip.sdp import NegotiatedAudio


@dataclass(frozen=True)
class CallInfo:
    """What routing may look at."""

    call_id: str
    dialed: str
    caller: str
    codec: str  # "PCMU" or "PCMA"
    headers: dict[str, str] = field(default_factory=dict)  # the INVITE's headers (first value of each)


class CallHandle:
    """What an audio source can do with its call: queue audio, read digits, wait for playout."""

    def __init__(self, info: CallInfo, queue: FrameQueue) -> None:
        self.info = info
        self.queue = queue
        self._digits: asyncio.Queue[DtmfDigit] = asyncio.Queue()

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
    async def run(self, call: CallHandle) -> None:
        """Push the call's audio into ``call.queue``; return when done (the server calls ``finish``).

        A source with ``handles_digits = True`` reacts to digits itself (menus); for the
        others the server's ``media.barge_in`` setting decides.
        """


Router = Callable[[CallInfo], "AudioSource | None"]


@dataclass
class Call:
    info: CallInfo
    incoming: IncomingCall
    media: NegotiatedAudio
    local_port: int
    queue: FrameQueue
    handle: CallHandle
    handles_digits: bool = False  # the source runs menus: no server-level barge-in
    early_media: bool = False  # played in 183 Session Progress, then refused with 480 (never answered)
    transport: asyncio.DatagramTransport | None = None
    sender: RtpSender | None = None
    producer: asyncio.Task[None] | None = None
    invite_at: float = 0.0
    confirmed_at: float | None = None
    confirmed_loop_time: float | None = None
    ended: bool = False
    binding: bool = False  # RTP socket being bound
    cleaned: bool = False  # port released, socket closed
    end_reason: str = ""
    session_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    sdp_version: int = 1
    session_id: int = 0
    held: bool = False
    dtmf: Rfc4733Detector | None = None
    digits: list[DtmfDigit] = field(default_factory=list)
    last_rtp_at: float | None = None  # when the caller's RTP last arrived (loop time)
    latched: bool = False  # symmetric RTP: remote taken from the caller's first packet
    rx: ReceiveStats = field(default_factory=ReceiveStats)  # the caller's stream: loss, jitter
    rtcp: asyncio.DatagramTransport | None = None
    rtcp_remote: tuple[str, int] | None = None  # where the caller's RTCP comes from (else RTP port + 1)
    rtcp_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    peer_report: ReportBlock | None = None  # the caller's view of our stream

    @property
    def remote(self) -> tuple[str, int]:
        return self.media.remote_host, self.media.remote_port
