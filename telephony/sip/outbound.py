"""One outbound call as a UAC (RFC 3261 §13.2, §9.1; RFC 3264 offer) — sans-IO.

Usage, in the style of :mod:`.useragent`::

    call = OutboundCall(OutboundConfig(target="sip:+15551234@trunk.example", ...))
    call.start(now)                              # the INVITE goes out
    call.receive(message, now, source)           # every response / in-dialog request for its Call-ID
    for ev in call.next_events(): ...            # CallProgress, TransferEvent
    for out in call.messages_to_send(): ...      # Send(data, uri | None, addr | None)
    call.deadline() -> float | None; call.handle_timer(now)
    call.hangup(now); call.transfer("sip:agent@pbx", now)

What it reports (``CallProgress.kind``): ``trying`` (first 1xx that is not 180/183),
``ringing`` (180/183: early media is ignored), ``answered`` (2xx with a usable SDP
answer; the negotiated codec comes with it), then exactly one outcome:
``busy`` (486, 600), ``declined`` (603), ``not_found`` (404, 604), ``no_answer``
(no 2xx within ``ring_timeout_s``: CANCEL sent, normally answered 487),
``unreachable`` (Timer B: no response at all, or a transport error), ``cancelled``
(``hangup`` before the answer), ``failed`` (anything else, with its code), or,
after ``answered``, ``ended`` (``local-bye``, ``remote-bye``, ``transferred``).

Why the details are as they are:

* A 401/407 is answered once per realm with digest credentials (``DigestClient``:
  SHA-256 preferred, MD5, nonce count); the retried INVITE has the next CSeq, a new
  branch, and keeps Call-ID and From tag (§22.2).
* CANCEL is sent only after a provisional response (§9.1): a ring timeout or a
  hangup before any 1xx waits for one. If no final response follows the CANCEL
  within 64*T1 the INVITE is given up (§9.1 last paragraph).
* A 2xx that crosses our CANCEL (or arrives after we gave up) is ACKed and then
  ended with a BYE, and the outcome stays ``no_answer`` / ``cancelled``.
* 2xx retransmissions are re-ACKed with the same ACK (§13.2.2.4); a 2xx from a
  second fork (another To tag) is ACKed and sent a BYE at once: one call, one dialog.
* Redirects (3xx) are not followed: they end as ``failed`` with the code.
* A REFER from the far end gets 405 with our Allow (see ``refer.py``): we never act on one.
* A re-INVITE or UPDATE inside the answered call (hold, resume, a new address, a session
  refresh) is reported as a ``SessionUpdate`` (events.py) and answered with ``answer_update``:
  the call table makes the same SDP answer as for an inbound call's re-offer; an offer while
  one is open gets 500 with Retry-After, an unusable SDP 488, one whose Require names an option
  we lack 420 with Unsupported (``bad_extension``, the UA's own check). RFC 4028 as the UA does it:
  a refresher=uac interval is agreed (and enforced by the call table), one below Min-SE gets 422,
  and each refresh agrees anew (``refreshed_interval``: one without Session-Expires turns the timer off).

Requests go out with ``uri`` set: the SIP URI whose host/port is the next hop
(outbound proxy, route set or target); the I/O layer resolves it. Responses to
in-dialog requests go out with ``addr`` set: where the request came from.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import NamedTuple

from .. import PRODUCT
from .dialog import Dialog, new_branch, new_tag
from .digest_client import DigestClient
from .events import SessionUpdate
from .invite_client import ClientEvent, InviteClientTransaction
from .message import (Headers, Message, Request, Response, SipParseError, check_address_headers, parse_message,
                      response_for)
from .refer import BlindTransfer, TransferEvent
from .sdp import NegotiatedAudio, SdpError, SessionDescription, negotiate, parse_sdp
from .transaction import (T1, Input, InviteServerTransaction, NonInviteClientTransaction, NonInviteServerTransaction,
                          State, TuEvent, _Transaction, response_input)
from .uac import branch_of, build_offer, uac_dialog
from .uri import NameAddr, SipUri
from .useragent import MIN_SE, _session_interval, bad_extension, refreshed_interval, session_timer_headers

Address = tuple[str, int]
log = logging.getLogger(__name__)

# Final responses with an outcome of their own; every other 3xx-6xx is "failed".
OUTCOMES = {486: "busy", 600: "busy", 603: "declined", 404: "not_found", 604: "not_found"}
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, UPDATE"


def new_call_id() -> str:
    """A Call-ID for a call we place (the application may take it before the INVITE exists)."""
    return secrets.token_hex(12) + "@sip-tts"


class Send(NamedTuple):
    """A message to send: a request to the next hop named by ``uri``, or a response to ``addr``."""

    data: bytes
    uri: str | None
    addr: Address | None


@dataclass(frozen=True)
class CallProgress:
    """One step of an outbound call; see the module docstring for ``kind``."""

    call_id: str
    kind: str
    status: int | None = None
    reason: str = ""
    answer: NegotiatedAudio | None = None
    remote_sdp: SessionDescription | None = None


@dataclass
class OutboundConfig:
    target: str  # Request-URI, e.g. sip:+15551234@trunk.example
    from_uri: str  # our identity, e.g. sip:tts@example.com
    contact: str  # our Contact URI, e.g. sip:tts@192.0.2.1:5060
    via_host: str  # host:port for our Via
    media_address: str  # c= of the SDP offer
    media_port: int  # m= port of the SDP offer
    transport: str = "UDP"
    from_display: str = ""
    to_uri: str | None = None  # the To URI (default: the target)
    username: str = ""  # digest credentials for the trunk
    password: str = ""
    outbound_proxy: str | None = None  # e.g. sip:proxy.example:5060;lr — preloaded Route, first hop
    ring_timeout_s: float = 30.0
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    dtmf_payload_type: int | None = 101  # None: no telephone-event in the offer
    user_agent: str = PRODUCT
    call_id: str = field(default_factory=new_call_id)

    def __post_init__(self) -> None:
        """Refuse what would make a malformed INVITE, naming the field (the API turns it into a 4xx)."""
        for name in ("target", "from_uri", "contact"):
            try:
                SipUri.parse(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if self.to_uri is not None:
            try:
                SipUri.parse(self.to_uri)
            except ValueError as exc:
                raise ValueError(f"to_uri: {exc}") from None
        if self.outbound_proxy:
            try:
                SipUri.parse(NameAddr.parse(self.outbound_proxy).uri if self.outbound_proxy.lstrip().startswith("<")
                             else self.outbound_proxy)
            except ValueError as exc:
                raise ValueError(f"outbound_proxy: {exc}") from None
        if self.transport.upper() not in ("UDP", "TCP", "TLS"):
            raise ValueError(f"transport: must be UDP, TCP or TLS, not {self.transport!r}")
        if not self.ring_timeout_s > 0:
            raise ValueError(f"ring_timeout_s: must be > 0, not {self.ring_timeout_s!r}")
        if any(c in self.from_display for c in '\r\n\0'):
            raise ValueError("from_display: control characters are not allowed")
        if not 0 < self.media_port < 65536:
            raise ValueError(f"media_port: must be 1-65535, not {self.media_port!r}")
        if self.dtmf_payload_type is not None and not 96 <= self.dtmf_payload_type <= 127:
            raise ValueError(f"dtmf_payload_type: must be a dynamic payload type 96-127, not {self.dtmf_payload_type!r}")
        build_offer(self.media_address, self.media_port, 0, self.codecs, self.dtmf_payload_type)


@dataclass
class OutboundCall:
    """One outbound call; see the module docstring."""

    config: OutboundConfig
    phase: str = "idle"  # idle, calling, early, cancelling, established, ended
    outcome: str | None = None
    dialog: Dialog | None = None
    invite: Request | None = None
    transfer_job: BlindTransfer | None = None
    _cancel_reason: str | None = None  # set: cancel as soon as a provisional allows it
    _cancel_sent: bool = False
    _cancel_guard: float | None = None
    _ring_deadline: float | None = None
    _reported: set[str] = field(default_factory=set)
    _ack: bytes | None = None  # our ACK of the accepted 2xx (replayed to its retransmissions)
    _cseq: int = 0
    _from_tag: str = field(default_factory=new_tag)
    _digest: DigestClient | None = None
    _txs: dict[str, _Transaction] = field(default_factory=dict)  # "branch:METHOD" → client transaction
    _server_txs: dict[str, tuple[_Transaction, Address | None]] = field(default_factory=dict)
    _outgoing: list[Send] = field(default_factory=list)
    _events: list[CallProgress | TransferEvent] = field(default_factory=list)
    _forks: set[str] = field(default_factory=set)  # To tags of 2xx we ACKed and ended at once
    _hops: dict[str, str] = field(default_factory=dict)  # transaction key → next-hop URI (default: first hop)
    _invite_key: str = ""  # the INVITE transaction in force (a challenged one is replaced)
    _update: tuple[str, Request] | None = None  # a re-INVITE/UPDATE waiting for ``answer_update``
    _accepted: dict[int, str] = field(default_factory=dict)  # CSeq of a re-INVITE we answered 2xx → its key
    session_expires: int | None = None  # RFC 4028 interval the far end's refreshes keep alive (None: none)

    @property
    def call_id(self) -> str:
        return self.config.call_id

    @property
    def reliable(self) -> bool:
        return self.config.transport.upper() != "UDP"

    @property
    def finished(self) -> bool:
        """Over, and no transaction left running: the owner may forget this call."""
        return (self.outcome is not None and all(t.terminated for t in self._txs.values())
                and all(t.terminated for t, _ in self._server_txs.values())
                and (self.transfer_job is None or self.transfer_job.done))

    # -- API ----------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Send the INVITE and start the ring timer."""
        if self.phase != "idle":
            raise RuntimeError("call already started")
        cfg = self.config
        if cfg.username:
            self._digest = DigestClient(cfg.username, cfg.password)
        self.phase = "calling"
        self._ring_deadline = now + cfg.ring_timeout_s
        self._send_invite(now, [])

    def next_events(self) -> list[CallProgress | TransferEvent | SessionUpdate]:
        events, self._events = self._events, []
        return events

    def answer_update(self, sdp: bytes | None, now: float, status: int = 200) -> None:
        """Answer the open re-INVITE/UPDATE: 200 with ``sdp``, or refuse it with ``status`` (the
        session stays as it was)."""
        if self._update is None:
            return
        key, req = self._update
        self._update = None
        entry = self._server_txs.get(key)
        if entry is None:
            return
        extra = [("Contact", f"<{self.config.contact}>")]
        if status == 200:  # (no SDP for an UPDATE without an offer: RFC 3311 §5.2)
            if sdp:
                extra.append(("Content-Type", "application/sdp"))
            self.session_expires = refreshed_interval(req)
            extra += session_timer_headers(self.session_expires)
        resp = response_for(req, status, extra=extra, body=(sdp or b"") if status == 200 else b"")
        entry[0].handle(response_input(status), now, resp.serialize())
        if status == 200 and req.method == "INVITE":
            self._accepted[req.cseq[0]] = key  # its ACK is a transaction of its own: matched by CSeq

    def messages_to_send(self) -> list[Send]:
        self._collect()
        out, self._outgoing = self._outgoing, []
        return out

    def hangup(self, now: float) -> None:
        """End the call from our side: CANCEL before the answer (``cancelled``), BYE after (``ended``)."""
        if self.phase in ("calling", "early"):
            self._want_cancel("cancelled", now)
        elif self.phase == "established":
            self._send_bye(now)
            self._finish("ended", None, "local-bye", now)

    def transfer(self, refer_to: str, now: float, timeout_s: float = 30.0, referred_by: str | None = None) -> None:
        """Blind-transfer the answered call to ``refer_to`` (REFER); the call ends when it succeeds."""
        if self.phase != "established" or self.dialog is None:
            raise RuntimeError("only an answered call can be transferred")
        if self.transfer_job is not None and self.transfer_job.outcome is None:
            raise RuntimeError("a transfer is already in progress")
        self.transfer_job = BlindTransfer(
            self.dialog, refer_to, referred_by or self.config.from_uri, self.config.via_host,
            self.config.contact, self.config.transport, timeout_s, self._digest)
        self.transfer_job.start(now)

    def transport_error(self, now: float) -> None:
        """The I/O layer could not send the INVITE (ICMP unreachable, connection refused)."""
        tx = self._invite_tx()
        if tx is not None and ClientEvent.TRANSPORT_ERROR in tx.on_transport_error(now):
            self._finish("unreachable", 503, "transport error")

    def deadline(self) -> float | None:
        times = [t.deadline() for t in self._txs.values()]
        times += [t.deadline() for t, _ in self._server_txs.values()]
        if self.phase in ("calling", "early") and self._cancel_reason is None:
            times.append(self._ring_deadline)
        times.append(self._cancel_guard)
        if self.transfer_job is not None:
            times.append(self.transfer_job.deadline())
        live = [t for t in times if t is not None]
        return min(live) if live else None

    def handle_timer(self, now: float) -> None:
        for tx in list(self._txs.values()):
            if TuEvent.TIMEOUT in tx.handle_timers(now) and tx is self._invite_tx():
                # Timer B: nothing answered at all (a CANCEL waits for a 1xx, so none was sent)
                kind = "cancelled" if self._cancel_reason == "cancelled" else "unreachable"
                self._finish(kind, 408, "no response (Timer B)")
        for tx, _ in self._server_txs.values():
            tx.handle_timers(now)
        if self.phase in ("calling", "early") and self._cancel_reason is None and \
                self._ring_deadline is not None and now >= self._ring_deadline:
            self._want_cancel("no_answer", now)
        if self._cancel_guard is not None and now >= self._cancel_guard:
            self._cancel_guard = None
            if self.phase == "cancelling":  # §9.1: no final response 64*T1 after the CANCEL
                tx = self._invite_tx()
                if tx is not None:
                    tx.timers.clear()
                    tx.state = State.TERMINATED
                self._finish(self._cancel_reason or "no_answer", 408, "no final response after CANCEL")
        if self.transfer_job is not None:
            self.transfer_job.handle_timer(now)
            self._take_transfer_events(now)
        self._forget_done()

    def receive_datagram(self, data: bytes, now: float, source: Address | None = None) -> None:
        """Bytes from the socket; malformed input is dropped (a 400 is the UA's business)."""
        try:
            msg = parse_message(data)
            if isinstance(msg, Response):
                check_address_headers(msg)  # what we copy into our ACK and BYE must be well formed
        except SipParseError:
            return
        self.receive(msg, now, source)

    def receive(self, msg: Message, now: float, source: Address | None = None) -> None:
        """A parsed response to one of our requests, or a request inside our dialog."""
        if msg.call_id != self.call_id:
            return
        try:
            if isinstance(msg, Response):
                self._receive_response(msg, now)
            else:
                self._receive_request(msg, now, source)
        except ValueError as exc:  # a malformed address in a header we had to read: drop it
            log.info("call %s: dropped a malformed message: %s", self.call_id, exc)
        self._forget_done()

    # -- sending ---------------------------------------------------------------------------------
    def _first_hop(self) -> str:
        return self._proxy_uri() or self.config.target

    def _proxy_uri(self) -> str | None:
        proxy = self.config.outbound_proxy
        if not proxy:
            return None
        return NameAddr.parse(proxy).uri if proxy.lstrip().startswith("<") else proxy.strip()

    def _via(self, branch: str) -> str:
        return f"SIP/2.0/{self.config.transport.upper()} {self.config.via_host};branch={branch};rport"

    def _send_invite(self, now: float, auth: list[tuple[str, str]]) -> None:
        cfg = self.config
        self._cseq += 1
        branch = new_branch()
        h = Headers()
        h.add("Via", self._via(branch))
        h.add("Max-Forwards", "70")
        if cfg.outbound_proxy:
            proxy = cfg.outbound_proxy if cfg.outbound_proxy.startswith("<") else f"<{cfg.outbound_proxy}>"
            h.add("Route", proxy)
        quoted = cfg.from_display.replace("\\", "\\\\").replace('"', '\\"')
        display = f'"{quoted}" ' if cfg.from_display else ""
        h.add("From", f"{display}<{cfg.from_uri}>;tag={self._from_tag}")
        h.add("To", f"<{cfg.to_uri or cfg.target}>")
        h.add("Call-ID", cfg.call_id)
        h.add("CSeq", f"{self._cseq} INVITE")
        h.add("Contact", f"<{cfg.contact}>")
        h.add("Allow", ALLOW)
        h.add("User-Agent", cfg.user_agent)
        for name, value in auth:
            h.add(name, value)
        h.add("Content-Type", "application/sdp")
        body = build_offer(cfg.media_address, cfg.media_port, secrets.randbelow(2**31),
                           cfg.codecs, cfg.dtmf_payload_type)
        self.invite = Request("INVITE", cfg.target, h, body)
        key = f"{branch}:INVITE"
        self._txs[key] = InviteClientTransaction.start(key, self.invite, now, self.reliable)
        self._invite_key = key

    def _invite_tx(self) -> InviteClientTransaction | None:
        tx = self._txs.get(self._invite_key)
        return tx if isinstance(tx, InviteClientTransaction) else None

    def _want_cancel(self, reason: str, now: float) -> None:
        self._cancel_reason = reason
        if self.phase == "early":
            self._send_cancel(now)
        # in "calling" no provisional yet: §9.1 says wait for one (_on_provisional sends it)

    def _send_cancel(self, now: float) -> None:
        """CANCEL of §9.1: the INVITE's Request-URI, top Via (same branch), From, To, Call-ID, Route."""
        if self._cancel_sent or self.invite is None:
            return
        inv = self.invite
        h = Headers()
        h.add("Via", inv.headers.get_all("Via")[0])
        h.add("Max-Forwards", "70")
        for route in inv.headers.get_all("Route"):
            h.add("Route", route)
        h.add("From", inv.headers.get("From") or "")
        h.add("To", inv.headers.get("To") or "")
        h.add("Call-ID", inv.call_id)
        h.add("CSeq", f"{inv.cseq[0]} CANCEL")
        h.add("User-Agent", self.config.user_agent)
        key = f"{branch_of(inv)}:CANCEL"
        self._txs[key] = NonInviteClientTransaction.start(key, Request("CANCEL", inv.uri, h).serialize(), now,
                                                          reliable=self.reliable)
        self._cancel_sent = True
        self.phase = "cancelling"
        self._cancel_guard = now + 64 * T1

    def _in_dialog_request(self, dialog: Dialog, method: str) -> tuple[Request, str]:
        branch = new_branch()
        return dialog.build_request(method, self._via(branch), f"<{self.config.contact}>"), branch

    def _send_ack(self, dialog: Dialog) -> bytes:
        """The ACK of a 2xx (§13.2.2.4): an in-dialog request with the INVITE's CSeq number and credentials."""
        assert self.invite is not None
        ack, _ = self._in_dialog_request(dialog, "ACK")
        dialog.local_cseq -= 1  # build_request counted it; an ACK takes no CSeq number of its own
        ack.headers.set("CSeq", f"{self.invite.cseq[0]} ACK")
        for name in ("Authorization", "Proxy-Authorization"):
            for value in self.invite.headers.get_all(name):
                ack.headers.add(name, value)
        data = ack.serialize()
        self._outgoing.append(Send(data, self._hop_for(dialog), None))
        return data

    def _hop_for(self, dialog: Dialog) -> str:
        """In-dialog next hop: a trunk's outbound proxy stays the first hop, else the route set / target."""
        return self._proxy_uri() or dialog.next_hop_uri()

    def _send_bye(self, now: float, dialog: Dialog | None = None) -> None:
        dialog = dialog or self.dialog
        assert dialog is not None
        bye, branch = self._in_dialog_request(dialog, "BYE")
        key = f"{branch}:BYE"
        tx = NonInviteClientTransaction.start(key, bye.serialize(), now, reliable=self.reliable)
        self._txs[key] = tx
        self._hops[key] = self._hop_for(dialog)

    def _collect(self) -> None:
        """Move what the transactions queued into the outgoing list, with their destinations.
        Our answers go first: the 200 to a NOTIFY that reports a transfer's success leaves
        before the BYE it caused."""
        for tx, addr in self._server_txs.values():
            if tx.outbox:
                self._outgoing.extend(Send(data, None, addr) for data in tx.outbox)
                tx.outbox.clear()
        for key, tx in self._txs.items():
            if tx.outbox:
                hop = self._hops.get(key, self._first_hop())
                self._outgoing.extend(Send(data, hop, None) for data in tx.outbox)
                tx.outbox.clear()
        if self.transfer_job is not None and self.dialog is not None:
            hop = self._hop_for(self.dialog)
            self._outgoing.extend(Send(data, hop, None) for data in self.transfer_job.take_outbox())

    # -- responses -------------------------------------------------------------------------------
    def _receive_response(self, resp: Response, now: float) -> None:
        try:
            _, method = resp.cseq
        except ValueError:
            return
        key = f"{branch_of(resp)}:{method}"
        if method == "REFER" and self.transfer_job is not None:
            self.transfer_job.on_response(resp, now)
            self._take_transfer_events(now)
            return
        tx = self._txs.get(key)
        if tx is None:
            if method == "INVITE" and 200 <= resp.status < 300:
                self._stray_2xx(resp, now)  # a 2xx after Timer M: still ACK and end it
            return
        if isinstance(tx, InviteClientTransaction):
            if ClientEvent.RESPONSE in tx.on_response(resp, now):
                self._invite_response(tx, resp, now)
            return
        before = tx.state
        tx.handle(response_input(resp.status), now)
        if before in (State.COMPLETED, State.TERMINATED) or resp.status < 200:
            return
        if method == "BYE" and resp.status in (401, 407) and self._digest is not None and self.dialog:
            self._retry_bye(resp, now)

    def _retry_bye(self, resp: Response, now: float) -> None:
        assert self.dialog is not None and self._digest is not None
        auth = self._digest.authorize(resp, "BYE", self.dialog.remote_target)
        if not auth:
            return
        bye, branch = self._in_dialog_request(self.dialog, "BYE")
        for name, value in auth:
            bye.headers.add(name, value)
        key = f"{branch}:BYE"
        self._txs[key] = NonInviteClientTransaction.start(key, bye.serialize(), now, reliable=self.reliable)
        self._hops[key] = self._hop_for(self.dialog)

    def _invite_response(self, tx: InviteClientTransaction, resp: Response, now: float) -> None:
        if tx is not self._invite_tx():
            if 200 <= resp.status < 300:
                self._stray_2xx(resp, now)
            return
        if resp.status < 200:
            self._on_provisional(resp, now)
        elif resp.status < 300:
            self._on_success(resp, now)
        else:
            self._on_failure(resp, now)

    def _on_provisional(self, resp: Response, now: float) -> None:
        if self.phase == "calling":
            self.phase = "early"
        if resp.status in (180, 183):
            self._report_once("ringing", resp)
        else:
            self._report_once("trying", resp)
        if self._cancel_reason is not None and not self._cancel_sent and self.phase == "early":
            self._send_cancel(now)

    def _on_success(self, resp: Response, now: float) -> None:
        assert self.invite is not None
        to_tag = NameAddr.parse(resp.headers.get("To") or "").tag
        if self.dialog is not None:
            if to_tag == self.dialog.remote_tag:
                if self._ack is not None:  # a retransmission of the 2xx: our ACK was lost
                    self._outgoing.append(Send(self._ack, self._hop_for(self.dialog), None))
                return
            self._stray_2xx(resp, now)
            return
        try:
            dialog = uac_dialog(self.invite, resp)
            for route in dialog.route_set:
                SipUri.parse(NameAddr.parse(route).uri)
            SipUri.parse(dialog.remote_target)
        except ValueError as exc:  # no usable Contact or Record-Route: we cannot even ACK it
            self._finish("failed", resp.status, f"malformed 2xx: {exc}")
            return
        self.dialog = dialog
        self._ack = self._send_ack(self.dialog)
        self._cancel_guard = None
        if self._cancel_reason is not None:  # the 2xx crossed our CANCEL (or beat it): end it
            self.phase = "established"
            self._send_bye(now)
            self._finish(self._cancel_reason, resp.status, "answered after the CANCEL; ended with BYE")
            return
        try:
            remote = parse_sdp(resp.body)
            negotiated, _ = negotiate(remote, list(self.config.codecs))
        except SdpError as exc:
            self.phase = "established"
            self._send_bye(now)
            self._finish("failed", resp.status, f"unusable SDP answer: {exc}")
            return
        self.phase = "established"
        self._events.append(CallProgress(self.call_id, "answered", resp.status, resp.reason, negotiated, remote))

    def _stray_2xx(self, resp: Response, now: float) -> None:
        """A 2xx from another fork, or one we no longer want: ACK it and end that dialog at once."""
        if self.invite is None:
            return
        to_tag = NameAddr.parse(resp.headers.get("To") or "").tag or ""
        if self.dialog is not None and to_tag == self.dialog.remote_tag:
            if self._ack is not None:
                self._outgoing.append(Send(self._ack, self._hop_for(self.dialog), None))
            return
        fork = uac_dialog(self.invite, resp)
        self._send_ack(fork)
        if to_tag not in self._forks:
            self._forks.add(to_tag)
            self._send_bye(now, fork)

    def _on_failure(self, resp: Response, now: float) -> None:
        if resp.status in (401, 407) and self._digest is not None and self._cancel_reason is None:
            auth = self._digest.authorize(resp, "INVITE", self.config.target)
            if auth:
                self.phase = "calling"
                self._send_invite(now, auth)
                return
        self._cancel_guard = None
        if self._cancel_reason is not None and resp.status == 487:
            self._finish(self._cancel_reason, resp.status, resp.reason)
            return
        self._finish(OUTCOMES.get(resp.status, "failed"), resp.status, resp.reason)

    # -- requests inside the dialog --------------------------------------------------------------
    def _receive_request(self, req: Request, now: float, source: Address | None) -> None:
        if req.method == "ACK":  # of a re-INVITE's final response: it stops our retransmissions
            key = f"{branch_of(req)}:INVITE"  # a non-2xx's ACK is in the INVITE's transaction
            if key not in self._server_txs:
                key = self._accepted.pop(req.cseq[0], "")  # a 2xx's: by its CSeq number
            entry = self._server_txs.get(key)
            if entry is not None:
                entry[0].handle(Input.ACK, now)
            return
        key = f"{branch_of(req)}:{req.method}"
        known = self._server_txs.get(key)
        if known is not None:
            known[0].handle(Input.REQUEST, now)  # a retransmission: replay our answer
            return
        to_tag = NameAddr.parse(req.headers.get("To") or "").tag
        dialog = self.dialog
        tx: _Transaction = InviteServerTransaction(key=key, reliable=self.reliable) if req.method == "INVITE" \
            else NonInviteServerTransaction(key=key, reliable=self.reliable)
        self._server_txs[key] = (tx, source)
        refusal = bad_extension(req)  # (before the dialog is looked at, as the UA does)
        if refusal is not None:
            resp = response_for(req, 420, extra=refusal)
        elif dialog is None or to_tag != dialog.local_tag:
            resp = response_for(req, 481)
        elif req.method == "BYE":
            resp = response_for(req, 200)
            if self.phase == "established":
                self._finish("ended", None, "remote-bye", now)
        elif req.method == "NOTIFY":
            if self.transfer_job is None:  # no subscription of ours (RFC 6665 §4.1.3)
                resp = response_for(req, 481)
            else:
                resp = self.transfer_job.on_notify(req, now)
                self._take_transfer_events(now)
        elif req.method in ("OPTIONS", "INFO"):
            resp = response_for(req, 200, extra=[("Allow", ALLOW)])
        elif req.method in ("INVITE", "UPDATE"):
            answered = self._session_offer(req, key, tx, now)
            if answered is None:
                return  # the call table answers (``answer_update``)
            resp = answered
        else:
            resp = response_for(req, 405, extra=[("Allow", ALLOW)])
        tx.handle(response_input(resp.status), now, resp.serialize())

    def _session_offer(self, req: Request, key: str, tx: _Transaction, now: float) -> Response | None:
        """A re-INVITE/UPDATE in our dialog: its refusal, or None once reported (``SessionUpdate``)."""
        assert self.dialog is not None
        if self.phase != "established":
            return response_for(req, 481)
        cseq, _ = req.cseq
        if cseq <= self.dialog.remote_cseq:  # out of order (RFC 3261 §12.2.2)
            return response_for(req, 500, extra=[("Retry-After", "1")])
        self.dialog.remote_cseq = cseq
        if req.method == "INVITE":
            tx.handle(Input.PROVISIONAL, now, response_for(req, 100).serialize())
        if self._update is not None:  # an offer of theirs is still open: 500 (RFC 3261 §14.2, RFC 3311 §5.2)
            return response_for(req, 500, extra=[("Retry-After", "1")])
        offer = None
        if req.body:
            try:
                offer = parse_sdp(req.body)
            except SdpError as exc:
                return response_for(req, 488, f"Not Acceptable Here - {exc}"[:80])
        try:
            interval, too_small = _session_interval(req)
        except ValueError:  # as the inbound user agent answers it
            return response_for(req, 400, "Bad Request - Session-Expires")
        if too_small:
            return response_for(req, 422, "Session Interval Too Small", extra=[("Min-SE", str(MIN_SE))])
        self._update = (key, req)  # (the interval is agreed by the 200: ``answer_update``)
        self._events.append(SessionUpdate(self.call_id, req.method, offer, interval))
        return None

    # -- outcomes --------------------------------------------------------------------------------
    def _take_transfer_events(self, now: float) -> None:
        job = self.transfer_job
        if job is None:
            return
        for event in job.events:
            self._events.append(event)
            if event.kind == "succeeded" and self.phase == "established":
                self._send_bye(now)
                self._finish("ended", None, "transferred", now)
        job.events.clear()

    def _report_once(self, kind: str, resp: Response) -> None:
        if kind not in self._reported:
            self._reported.add(kind)
            self._events.append(CallProgress(self.call_id, kind, resp.status, resp.reason))

    def _finish(self, kind: str, status: int | None, reason: str, now: float | None = None) -> None:
        """The call's outcome; ``now``: an answered call ends (a re-offer still open gets 487, RFC 3261
        §15.1.2, so that its transaction ends too)."""
        if now is not None and self._update is not None:
            self.answer_update(None, now, 487)
        if self.outcome is None:
            self.outcome = kind
            self._events.append(CallProgress(self.call_id, kind, status, reason))
        self.phase = "ended"
        self._cancel_guard = None

    def _forget_done(self) -> None:
        for key in [k for k, (t, _) in self._server_txs.items() if t.terminated and not t.outbox]:
            del self._server_txs[key]
