"""A call's media I/O: its RTP and RTCP sockets, its audio source's task, its sender on the
pacer clock. The server hands every action of the call table (``calls.py``) to ``MediaIO.act``,
which carries it out and reports the results back to the table.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from structlog.contextvars import bind_contextvars, bound_contextvars

from media import SAMPLE_RATE, silence

from .addresses import for_v6_socket
from .call import CallControl, CallHandle
from .calls import (Action, Answered, BargeIn, Bind, Call, CallerAudio, CallTable, Digit, Ended, Produce, Release,
                    SendRtcp, StartSending)
from .rtp.pacer import PacerClock, RtpSender
from .transports import CallSocket, bind_udp

log = logging.getLogger("telephony.server")


class ServerHooks(Protocol):
    """What the server reports as calls go (metrics live outside telephony/)."""

    def call_answered(self, call: Call, seconds: float) -> None: ...

    def call_ended(self, call: Call, reason: str) -> None: ...


@dataclass(eq=False)
class _CallIO:
    """A call's sockets and tasks: what the table's actions act on."""

    handle: CallHandle
    producer: asyncio.Task[None] | None = None
    rtp: asyncio.DatagramTransport | None = None
    rtcp: asyncio.DatagramTransport | None = None


class MediaIO:
    """Carries out the call table's actions with sockets, tasks and the pacer clock."""

    def __init__(self, table: CallTable, clock: PacerClock, loop: asyncio.AbstractEventLoop, listen_host: str,
                 dscp: int, hangup_after_prompt_ms: int, hooks: ServerHooks | None,
                 pump: Callable[[], None]) -> None:
        self.table, self.clock, self.loop = table, clock, loop
        self.listen_host, self.dscp, self.hangup_after_prompt_ms = listen_host, dscp, hangup_after_prompt_ms
        self.hooks = hooks
        self.v6 = ":" in listen_host  # IPv6 sockets (dual stack on "::"): IPv4 peers as ::ffff:a.b.c.d
        self.pump = pump  # the server's: after an I/O result, the cores' new output goes out
        self._io: dict[str, _CallIO] = {}
        self.control: CallControl | None = None  # what a call's script may ask of the server (transfer)

    def now(self) -> float:
        return self.loop.time()

    def act(self, action: Action) -> None:
        """Carry out one of the call table's actions."""
        call = action.call
        call_id = call.info.call_id
        if isinstance(action, CallerAudio):  # first: 50 a second per listening call
            io = self._io.get(call_id)
            if io is not None:
                io.handle.audio_arrived(action.sequence, action.timestamp, action.payload)
        elif isinstance(action, Produce):
            handle = CallHandle(call.info, call.queue, tap=lambda on: setattr(call, "tap_audio", on))
            io = self._io.get(call_id)
            if io is None:
                io = self._io[call_id] = _CallIO(handle)
            else:  # an outbound call answered in another codec: its audio made again (sockets kept)
                if io.producer is not None:
                    io.producer.cancel()
                io.handle = handle
            if self.control is not None:
                io.handle.control = self.control
            io.producer = asyncio.ensure_future(self._produce(call, io.handle))
        elif isinstance(action, Bind):
            asyncio.ensure_future(self._bind(call, action.port))
        elif isinstance(action, StartSending):
            io = self._io[call_id]
            transport = io.rtp
            assert transport is not None
            sender = RtpSender(payload_type=call.media.payload_type, codec=call.info.codec, queue=call.queue,
                               send=self._rtp_send(call, transport), on_done=lambda: self._prompt_done(call_id))
            self.table.sending(call_id, sender)
            self.clock.add(sender)
        elif isinstance(action, Digit):
            digit = action.digit
            log.info("call %s: DTMF %s (%d ms, %s)", call_id, digit.digit, digit.duration_ms, digit.source)
            if call_id in self._io:
                self._io[call_id].handle.digit_arrived(digit)
        elif isinstance(action, BargeIn):
            if action.announce:
                log.info("call %s: barge-in", call_id)
            io = self._io.get(call_id)
            call.queue.flush()
            if io is not None and io.producer is not None and not io.producer.done():
                io.producer.cancel()
            call.queue.finish()  # with nothing queued the pacer ends the prompt on its next slot
        elif isinstance(action, SendRtcp):
            self._send_rtcp(action)
        elif isinstance(action, Release):
            self._release(call, action.final_rtcp)
        elif isinstance(action, Answered):
            if self.hooks is not None:
                self.hooks.call_answered(call, action.seconds)
        elif isinstance(action, Ended):
            if self.hooks is not None:
                self.hooks.call_ended(call, action.reason)
            if call_id in self._io:  # the audio source hears of it before it is cancelled
                self._io[call_id].handle.call_ended(action.reason)

    def _rtp_send(self, call: Call, transport: asyncio.DatagramTransport) -> Callable[[bytes], None]:
        """The sender's output: to where the call's remote is now (it may move: re-INVITE, latching),
        through the call's SRTP session when it has one (a re-offer may rekey it: read at each packet)."""
        if self.v6:
            return lambda data: transport.sendto(call.srtp.protect(data) if call.srtp is not None else data,
                                                 for_v6_socket(call.remote))
        if call.srtp is not None:
            return lambda data: transport.sendto(call.srtp.protect(data), call.remote)  # type: ignore[union-attr]
        return lambda data: transport.sendto(data, call.remote)

    def _prompt_done(self, call_id: str) -> None:
        call = self.table.calls.get(call_id)
        if call is not None:
            with bound_contextvars(call_id=call_id, dialed=call.info.dialed):
                self.table.prompt_done(call_id, self.now())
            self.pump()

    def _send_rtcp(self, report: SendRtcp) -> None:
        io = self._io.get(report.call.info.call_id)
        if io is not None and io.rtcp is not None:
            try:
                io.rtcp.sendto(report.data, for_v6_socket(report.addr) if self.v6 else report.addr)
            except OSError:
                pass

    def _release(self, call: Call, final_rtcp: SendRtcp | None) -> None:
        call_id = call.info.call_id
        if final_rtcp is not None:
            self._send_rtcp(final_rtcp)
        io = self._io.pop(call_id, None)
        if call.sender is not None:
            self.clock.remove(call.sender)
        if io is not None:
            if io.producer is not None and not io.producer.done():
                io.producer.cancel()
            for transport in (io.rtcp, io.rtp):
                if transport is not None:
                    transport.close()
        self.table.released(call_id)

    # -- a call's media I/O ----------------------------------------------------------------
    async def _produce(self, call: Call, handle: CallHandle) -> None:
        # This task's own context: every line logged while producing the call's audio carries it.
        bind_contextvars(call_id=call.info.call_id, dialed=call.info.dialed, caller=call.info.caller)
        try:
            await call.source.run(handle)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s: audio source failed", call.info.call_id)
        if call.outbound and self.table.calls.get(call.info.call_id) is call:  # (ringing, nothing queued: cancelled)
            self.table.source_over(call.info.call_id, self.now())
            self.pump()
        tail = int(self.hangup_after_prompt_ms / 1000 * SAMPLE_RATE)
        if tail:
            call.queue.push(silence(call.info.codec, tail))
        call.queue.finish()

    async def _bind(self, call: Call, port: int) -> None:
        """Bind the call's RTP socket (and RTCP on the odd port above, if free), then tell the table.

        The sockets are bound here, synchronously, and handed to asyncio: with a host string
        asyncio would resolve it in a thread pool first, a thread hop per call that showed up as
        INVITE→200 latency under load.
        """
        call_id = call.info.call_id
        host = self.listen_host
        rtp = bind_udp(host, port, self.dscp)
        io = self._io.get(call_id)
        if rtp is not None and io is not None:
            io.rtp, _ = await self.loop.create_datagram_endpoint(
                lambda: CallSocket(lambda d, a: self._on_rtp(call_id, d, a)), sock=rtp)
            rtcp = bind_udp(host, port + 1, 0)
            if rtcp is not None:
                io.rtcp, _ = await self.loop.create_datagram_endpoint(
                    lambda: CallSocket(lambda d, a: self.table.rtcp_received(call_id, d, a)), sock=rtcp)
        elif rtp is not None:
            rtp.close()
        refuse = await self._answer_after(call, io) if rtp is not None and io is not None else None
        with bound_contextvars(call_id=call_id, dialed=call.info.dialed):
            self.table.media_bound(call_id, rtp is not None, self.now(), refuse)
        self.pump()

    async def _answer_after(self, call: Call, io: _CallIO) -> int | None:
        """A source with ``answer_after`` (a webhook route) decides when the call is answered: None
        answers, a status refuses. Its audio task ending (the caller gave up) ends the wait too."""
        decide = getattr(call.source, "answer_after", None)
        if decide is None or io.producer is None:
            return None
        waiter = asyncio.ensure_future(decide())
        await asyncio.wait((waiter, io.producer), return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            return None
        return waiter.result()

    def _on_rtp(self, call_id: str, data: bytes, addr: tuple[str, int]) -> None:
        self.table.rtp_received(call_id, data, addr, self.now())
        actions = self.table.actions()  # a digit (and a barge-in), caller audio: nothing that sends SIP
        if len(actions) == 1 and isinstance(actions[0], CallerAudio):  # the common case, no log context needed
            self.act(actions[0])
        elif actions:
            call = actions[0].call
            with bound_contextvars(call_id=call_id, dialed=call.info.dialed):
                for action in actions:
                    self.act(action)

