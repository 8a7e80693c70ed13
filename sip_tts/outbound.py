"""Outbound calls as the application places them: a request (to, from, trunk, what to play)
turned into a ``Dial`` for the SIP server, and each call's progress sent to its status callback
and to its live session (sip_tts/live: the events of ``/v1/calls/{id}/stream``, kept for an
application that attaches later).

Runs on the server's event loop (the HTTP API hands requests across when it has a thread of
its own). The trunks of server.yaml are resolved here (a host name once, without blocking);
the audio of an answered call is an ordinary script run (``say`` is a one-step script,
``steps`` the prompts.yaml step schema), started when the INVITE goes out.

A placed call is there for what it has to say: if its script ends while the phone still rings
with nothing queued (the application of a ``live``/``connect`` first step went away without a
word, and no step follows), nobody is left to drive it and it is cancelled at once (CANCEL,
outcome ``cancelled``; ``CallTable.source_over``) instead of being answered only to be hung up.
One that has just been answered ends with our BYE, as any script that ends; text the
application sent before it went is heard from the answer on first.

A call's record (its status callback) is filed before its INVITE exists: an outcome can come
within ``place`` itself (a send that fails at once is ``unreachable`` in that call's own pump).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from config.schema import Route, ServerConfig
from config.steps import References
from config.trunks import TrunkSettings
from telephony.addresses import is_ip
from telephony.call import CallInfo
from telephony.outbound_io import Dial, OutboundIO, Progress, Trunk
from telephony.sip.outbound import CallProgress
from telephony.sip.outbound_calls import TrunkLimits
from telephony.sip.uri import SipUri

from .script import ScriptRun, Speech

log = logging.getLogger("sip_tts.outbound")
NUMBER = re.compile(r"^\+?[0-9*#]{1,32}$")
NUMBER_NOISE = re.compile(r"[\s\-.()]")
FINAL = {"busy", "declined", "not_found", "no_answer", "unreachable", "cancelled", "failed", "ended"}


class BadRequest(ValueError):
    """A request the server cannot place: ``field`` names what is wrong (the API's 400 ``param``)."""

    def __init__(self, fld: str, message: str) -> None:
        super().__init__(f"{fld}: {message}")
        self.field = fld


@dataclass
class CallOrder:
    """What POST /v1/calls asks for (validated by the API's schema; checked again here against
    the configuration: trunk names, voices, scripts)."""

    to: str
    from_: str | None = None
    trunk: str | None = None
    say: str | None = None
    steps: list | None = None
    webhook: str | None = None  # ask this application what to play (sip_tts/webhooks), while it rings
    connect: str | None = None  # on answer, the application drives the call over this WebSocket
    voice: str | None = None
    ring_timeout_s: float | None = None
    status_callback: str | None = None
    vars: dict[str, str] = field(default_factory=dict)


@dataclass
class _Record:
    to: str
    status_callback: str | None
    state: str = "calling"
    initiated: bool = False  # its ``initiated`` callback is posted (first, whatever comes next)


class Originator:
    """POST /v1/calls and POST /v1/calls/{id}/transfer, on the server's loop."""

    def __init__(self, cfg: ServerConfig, outbound: OutboundIO, speech: Callable[[], Speech], webhooks=None,
                 live=None) -> None:
        self.cfg = cfg
        self.outbound = outbound
        self.webhooks = webhooks  # sip_tts.webhooks.Webhooks: the client of webhook routes
        self.live = live  # sip_tts.live.LiveCalls: progress on the call's WebSocket (None: the API is off)
        self.speech = speech  # the prompts in force (a reload swaps them; placed calls keep theirs)
        self.records: dict[str, _Record] = {}
        self._resolved: dict[str, Trunk] = {}
        self._posts: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        self._poster: asyncio.Task | None = None
        outbound.listeners.append(self._progress)

    async def place(self, order: CallOrder) -> str:
        """The Call-ID of the call whose INVITE just went out. Raises ``BadRequest`` or ``CallRefused``
        (telephony/sip/outbound_calls.py: max_calls, the trunk's limits; no INVITE was sent)."""
        trunk_cfg, trunk_name = self._trunk_settings(order)
        trunk = await self._trunk(trunk_name, trunk_cfg) if trunk_cfg is not None else None
        target = self._target(order.to, trunk_cfg, trunk)
        from_uri = self._from(order.from_, trunk_cfg, trunk)
        source, handed = self._source(order)
        ring = order.ring_timeout_s or (trunk_cfg.ring_timeout_s if trunk_cfg else 30.0)
        loop = asyncio.get_running_loop()
        dial = Dial(target, from_uri, source, trunk, ring_timeout_s=ring)
        call_id = dial.call_id
        # Filed before the INVITE: an outcome can come within ``place`` itself (a send that fails
        # at once is ``unreachable`` in its own pump), and must find the record (its status
        # callback) and the live registry's expectation (which the outcome clears).
        record = self.records[call_id] = _Record(order.to, order.status_callback)
        if handed and self.live is not None:
            self.live.expect(call_id)  # its stream may be opened before the first step runs
        try:
            self.outbound.place(dial, loop.time())
        except BaseException as exc:  # no INVITE went out: nothing to report, nothing kept
            self.records.pop(call_id, None)
            if handed and self.live is not None:
                self.live.placed_over(call_id)
            if isinstance(exc, ValueError):  # OutboundConfig names the field: the target's or the caller's URI
                raise BadRequest("to" if str(exc).startswith(("target", "to_uri")) else "from", str(exc)) from None
            raise
        self._initiated(call_id, record)
        return call_id

    async def transfer(self, call_id: str, target: str) -> dict:
        """Blind transfer; the outcome (the call ends on success, stays up on failure)."""
        try:
            SipUri.parse(target)
        except ValueError as exc:
            raise BadRequest("target", str(exc)) from None
        kind, status, reason = await self.outbound.transfer(call_id, target)
        self._post(call_id, {"event": f"transfer_{kind}", "sip_status": status, "reason": reason})
        session = self.live.get(call_id) if self.live is not None else None
        if session is not None:  # (an inbound call's too)
            session.notify(f"transfer_{kind}", sip_status=status, reason=reason)
        return {"call_id": call_id, "outcome": kind, "sip_status": status, "reason": reason}

    # -- building the call ---------------------------------------------------------------------
    def _trunk_settings(self, order: CallOrder) -> tuple[TrunkSettings | None, str]:
        trunks = self.cfg.trunks
        if order.trunk is not None:
            if order.trunk not in trunks:
                known = ", ".join(trunks) or "none configured"
                raise BadRequest("trunk", f"unknown trunk {order.trunk!r} (server.yaml trunks: {known})")
            return trunks[order.trunk], order.trunk
        if not _is_uri(order.to):
            if len(trunks) != 1:
                raise BadRequest("trunk", "a number needs a trunk (server.yaml trunks: "
                                          f"{', '.join(trunks) or 'none configured'})")
            name = next(iter(trunks))
            return trunks[name], name
        return None, ""

    async def _trunk(self, name: str, cfg: TrunkSettings) -> Trunk:
        trunk = self._resolved.get(name)
        if trunk is not None:
            return trunk
        from config.schema import parse_hostport

        host, port = parse_hostport(cfg.address)
        ip = host.strip("[]")
        if not is_ip(ip):
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(ip, port)
            except OSError as exc:
                raise BadRequest("trunk", f"trunk {name!r}: cannot resolve {host}: {exc}") from None
            ip = infos[0][4][0]
        trunk = Trunk(name, ip, port, cfg.transport, cfg.domain or "", cfg.username, cfg.password,
                      cfg.outbound_proxy, TrunkLimits(cfg.calls_per_second, cfg.max_concurrent), cfg.caller_id or "")
        self._resolved[name] = trunk
        return trunk

    def _target(self, to: str, cfg: TrunkSettings | None, trunk: Trunk | None) -> str:
        if _is_uri(to):
            try:
                SipUri.parse(to)
            except ValueError as exc:
                raise BadRequest("to", str(exc)) from None
            return to
        number = NUMBER_NOISE.sub("", to)
        if not NUMBER.match(number):
            raise BadRequest("to", f"neither a SIP URI nor a number: {to!r}")
        assert cfg is not None and trunk is not None
        return f"sip:{cfg.user_for(number)}@{_domain(trunk)}"

    def _from(self, given: str | None, cfg: TrunkSettings | None, trunk: Trunk | None) -> str:
        if given is not None and _is_uri(given):
            try:
                SipUri.parse(given)
            except ValueError as exc:
                raise BadRequest("from", str(exc)) from None
            return given
        user = NUMBER_NOISE.sub("", given) if given is not None else (cfg.caller_id if cfg else None)
        if given is not None and not NUMBER.match(user or ""):
            raise BadRequest("from", f"neither a SIP URI nor a number: {given!r}")
        if trunk is not None:
            host = trunk.domain or _bracket(trunk.host)  # (a From names no port)
        else:
            host = _bracket(self.outbound.table.settings.advertised_host)
        return f"sip:{user or 'sip-tts'}@{host}"

    def _source(self, order: CallOrder) -> tuple[Callable[[CallInfo], ScriptRun], bool]:
        """The answered call's script (checked now: unknown voices and scripts are a 400), and
        whether its first step hands the call to an application (``live``, ``connect``)."""
        speech = self.speech()
        steps = [{"connect": order.connect}] if order.connect is not None else order.steps
        try:
            route = Route.model_validate({"say": order.say, "steps": steps, "webhook": order.webhook,
                                          "voice": order.voice, "vars": order.vars})
        except ValueError as exc:
            field = "connect" if order.connect is not None else "webhook" if order.webhook is not None else "steps"
            raise BadRequest(field, str(exc).splitlines()[0]) from None
        if route.webhook is not None:
            from .webhooks.source import secret_of

            if self.webhooks is None or not secret_of(route, speech):
                raise BadRequest("webhook", "needs webhooks.secret in prompts.yaml (what we send is signed)")
            webhooks = self.webhooks
            return (lambda info: webhooks.source(speech, route, info)), False
        refs = References(set(speech.prompts.voices), set(speech.prompts.scripts))
        refs.voice(("voice",), route.voice)
        if route.steps:
            refs.steps(("steps",), route.steps)
        if refs.errors:
            loc, message = refs.errors[0]
            raise BadRequest(".".join(str(p) for p in loc), message)
        first = route.script_steps(speech.prompts.scripts)[:1]
        return (lambda info: ScriptRun(speech, route, info)), bool(first) and first[0].kind in ("live", "connect")

    # -- progress --------------------------------------------------------------------------------
    def _progress(self, ev: Progress) -> None:
        record = self.records.get(ev.call_id)
        if record is None or not isinstance(ev, CallProgress):
            return  # (transfer outcomes are posted by ``transfer``, with the request's answer)
        self._initiated(ev.call_id, record)
        record.state = ev.kind
        self._post(ev.call_id, {"event": ev.kind, "sip_status": ev.status, "reason": ev.reason})
        if self.live is not None:
            if ev.kind != "ended":  # (the stream's own ``ended`` event says how an answered call ended)
                extra = {"codec": ev.answer.codec} if ev.answer is not None else {}
                self.live.progress(ev.call_id, ev.kind, sip_status=ev.status, reason=ev.reason, **extra)
            if ev.kind in FINAL:
                self.live.placed_over(ev.call_id, None if ev.kind == "ended" else ev.kind)
        if ev.kind in FINAL:
            del self.records[ev.call_id]

    def _initiated(self, call_id: str, record: _Record) -> None:
        """The ``initiated`` callback, once and before any other (an outcome within ``place``)."""
        if not record.initiated:
            record.initiated = True
            self._post(call_id, {"event": "initiated", "to": record.to}, record)

    def _post(self, call_id: str, body: dict, record: _Record | None = None) -> None:
        record = record or self.records.get(call_id)
        if record is None or record.status_callback is None:
            return
        self._posts.put_nowait((record.status_callback, {"call_id": call_id, "time": time.time(), **body}))
        if self._poster is None or self._poster.done():
            self._poster = asyncio.ensure_future(self._send_posts())

    async def _send_posts(self) -> None:
        """One at a time, in order: a slow receiver delays only these posts, never a call."""
        import httpx

        async with httpx.AsyncClient(timeout=5.0) as client:
            while not self._posts.empty():
                url, body = self._posts.get_nowait()
                try:
                    await client.post(url, json=body)
                except httpx.HTTPError as exc:
                    log.warning("status callback %s failed: %s", url, exc)

    async def close(self) -> None:
        if self._poster is not None:
            self._poster.cancel()


class OutboundGauges:
    """/metrics: what outbound calls hold (each back to 0 when no call is up: nothing leaked)."""

    def __init__(self, server) -> None:
        self.server = server

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        out = self.server.outbound  # (RTP ports: sip_tts_rtp_ports_in_use, app.py)
        if out is None:
            return
        yield GaugeMetricFamily("sip_tts_outbound_calls_active", "outbound calls without an outcome yet",
                                value=out.active())
        yield GaugeMetricFamily("sip_tts_outbound_sip_calls", "outbound calls with SIP state left (a final "
                                "response's transaction lingers 32 s over UDP)", value=len(out.calls.calls))
        yield GaugeMetricFamily("sip_tts_outbound_io_tasks", "name look-ups and TCP connects in flight",
                                value=out.tasks)


def _is_uri(text: str) -> bool:
    return text.lower().startswith(("sip:", "sips:"))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _domain(trunk: Trunk) -> str:
    """The host part of a Request-URI through ``trunk``: its domain, else its address."""
    if trunk.domain:
        return trunk.domain
    return _bracket(trunk.host) + (f":{trunk.port}" if trunk.port != 5060 else "")
