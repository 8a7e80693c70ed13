"""The sans-IO SIP user agent: datagrams and time in, events and datagrams out.

Usage, in the style of aioquic::

    ua = UserAgent(UserAgentConfig(...))
    ua.receive_datagram(data, addr, now)      # feed what the socket read
    for event in ua.next_events(): ...        # IncomingCall, CallConfirmed, CallEnded
    ua.answer(call_id, sdp, now) / ua.reject(...) / ua.hangup(call_id, now)
    for data, addr in ua.datagrams_to_send(): sock.sendto(data, addr)
    ua.get_timer() -> float | None; ua.handle_timer(now)

It serves INVITE (with ACK, CANCEL, BYE) as a UAS, answers OPTIONS, sends BYE
as a UAC, and answers everything else with 405 or 501. Malformed input gets
400 when a response can be formed, else it is dropped; no input raises.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import NamedTuple

from .. import PRODUCT
from ..addresses import is_ip as _is_ip
from ..admission import Admission
from .auth import DigestAuthenticator
from .dialog import Dialog, new_branch, new_tag
from .refer import BlindTransfer
from .registration import Registration
from .events import CallConfirmed, CallEnded, Event, IncomingCall, InfoReceived, SessionUpdate
from .message import (
    Request,
    Response,
    SipParseError,
    parse_message,
    response_for,
    response_for_error,
)
from .sdp import SdpError, parse_sdp
from .transaction import (InviteServerTransaction, Input, NonInviteClientTransaction, NonInviteServerTransaction,
                          State, TuEvent, _Transaction, response_input)
from .uri import NameAddr, SipUri, Via

log = logging.getLogger(__name__)

Address = tuple[str, int]

SERVED = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO")
# Methods we know (RFC 3261 and common extensions) but do not serve: 405 + Allow.
KNOWN_UNSERVED = ("REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "MESSAGE")
ACCEPT = "application/sdp"
SUPPORTED = "timer"  # RFC 4028 session timers (we never refresh: the caller does)
SUPPORTED_OPTIONS = frozenset({"timer"})  # what a Require may name without a 420
MIN_SE = 90  # RFC 4028 minimum session interval, seconds


class Outgoing(NamedTuple):
    """A message to send: where, and over which transport ("UDP" or "TCP": a response or an
    in-dialog request goes back over the transport its request or dialog came in on)."""

    data: bytes
    addr: "Address"
    transport: str


class _Sink(list):  # type: ignore[type-arg]
    """A transaction's outbox that goes straight to the UA's outgoing queue, tagged with its
    address and transport.

    So the UA never scans every transaction for something to send (that was O(calls) per message).
    """

    def __init__(self, out: list[Outgoing], addr: "Address", transport: str) -> None:
        super().__init__()
        self._out = out
        self._addr = addr
        self._transport = transport

    def append(self, data: bytes) -> None:  # type: ignore[override]
        self._out.append(Outgoing(data, self._addr, self._transport))


@dataclass
class UserAgentConfig:
    advertised_host: str  # what goes in Contact and Via
    port: int
    user_agent: str = PRODUCT
    tls_port: int | None = None  # where we listen for TLS: our Via and Contact on TLS dialogs


@dataclass
class _Call:
    dialog: Dialog
    invite: Request
    invite_tx: InviteServerTransaction
    invite_branch_key: str
    answered: bool = False
    ended: bool = False
    last_answer: bytes = b""
    bye_key: str | None = None
    session_expires: int | None = None  # agreed RFC 4028 interval (the caller refreshes)
    pending_update: tuple[str, Request] | None = None  # (transaction key, request) awaiting answer_update


@dataclass
class UserAgent:
    config: UserAgentConfig
    draining: bool = False  # True: new INVITEs and OPTIONS get 503 (shutting down)
    unavailable: bool = False  # True: what calls need (the TTS engine) is down: 503 too, until it is back
    max_calls: int = 0  # concurrent calls; 0: no cap. Full: new INVITEs and OPTIONS get 503
    retry_after: int = 5
    admission: Admission | None = None
    authenticator: DigestAuthenticator | None = None  # set: new INVITEs need digest credentials
    registration: Registration | None = None  # set: keep a contact registered (see start_registration)
    registrar: Address | None = None
    _outgoing: list[Outgoing] = field(default_factory=list)
    _events: list[Event] = field(default_factory=list)
    _transactions: dict[str, tuple[_Transaction, Address]] = field(default_factory=dict)
    _calls: dict[str, _Call] = field(default_factory=dict)
    _call_of_tx: dict[str, str] = field(default_factory=dict)  # transaction key → Call-ID
    _current_transport: str = "UDP"
    _request_key: str | None = None  # transaction key of the request being handled
    _now: float = 0.0  # the time of the current entry point
    _timers: list[tuple[float, int, str]] = field(default_factory=list)  # heap of (deadline, seq, key)
    _touched: set[str] = field(default_factory=set)  # transactions whose deadline may have changed
    _seq: int = 0
    _transfers: dict[str, tuple[BlindTransfer, Address, str]] = field(default_factory=dict)  # Call-ID → REFER job

    def _server_tx(self, req: Request, key: str) -> _Transaction:
        cls = InviteServerTransaction if req.method == "INVITE" else NonInviteServerTransaction
        return cls(key=key, reliable=self._reliable)

    @property
    def _reliable(self) -> bool:
        """Whether the request being handled came over a stream (TCP, TLS)."""
        return self._current_transport != "UDP"

    @property
    def accepting(self) -> bool:
        """Whether a new call would be taken now (what OPTIONS tells a load balancer)."""
        return not self.draining and not self.unavailable and \
            (self.max_calls <= 0 or self.active_calls < self.max_calls)

    # -- I/O-facing API -----------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Address, now: float, transport: str = "UDP") -> None:
        """One message from ``addr``; ``transport`` is "UDP" or "TCP" (a framed message from a stream).

        Responses go back to ``addr``; over TCP the I/O layer maps it to the connection.
        """
        self._current_transport = transport
        self._now = now
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive (RFC 5626 CRLF) or padding
        adm = self.admission
        max_headers = adm.policy.max_headers if adm else 0
        try:
            msg = parse_message(data, max_headers=max_headers)
        except SipParseError as err:
            if err.can_respond and (adm is None or adm.allowed(addr[0])):
                extra = [("Allow", ", ".join(SERVED))] if err.status in (405, 501) else []
                self._send_response(response_for_error(err, extra=extra), addr)
            else:
                log.debug("dropped unparseable datagram from %s: %s", addr, err.reason)
            return
        if adm is not None and not self._admit(msg, data, addr, now, adm):
            return
        try:
            if isinstance(msg, Request):
                self._receive_request(msg, addr, now)
            else:
                self._receive_response(msg, now)
        except (ValueError, KeyError, IndexError) as exc:
            # A well-framed message whose header values are nonsense (a bad URI, Via, tag).
            if isinstance(msg, Request) and msg.method != "ACK":
                reason = f"Bad Request - {str(exc)[:60]}".replace("\r", " ").replace("\n", " ")
                resp = response_for(msg, 400, reason, to_tag=new_tag())
                entry = self._transactions.get(self._request_key) if self._request_key else None
                if entry is not None and entry[0].state in (State.TRYING, State.PROCEEDING):
                    # Its transaction already exists (it sent 100 Trying): answer through it, so
                    # it ends normally and a retransmission gets the 400 again.
                    entry[0].handle(Input.FAILURE, now, resp.serialize())
                    self._touched.add(self._request_key)
                    self._drop_unanswered_call(self._request_key)
                else:
                    self._send_response(resp, addr)
            else:
                log.debug("dropped bad message from %s: %s", addr, exc)
        self._settle()

    def _admit(self, msg: Request | Response, data: bytes, addr: Address, now: float, adm: Admission) -> bool:
        """Allow-list and size checks; False: answered (403/513) or dropped here."""
        if not adm.allowed(addr[0]):
            if adm.should_log_refusal(addr[0], now):
                log.warning("refused %s from %s: not in the allow-list", getattr(msg, "method", "response"), addr[0])
            adm.refused_sources += 1
            if isinstance(msg, Request) and msg.method != "ACK":
                self._send_response(response_for(msg, 403, to_tag=new_tag()), addr)
            return False
        if len(data) > adm.policy.max_message_bytes:
            if isinstance(msg, Request) and msg.method != "ACK":
                self._send_response(response_for(msg, 513, to_tag=new_tag()), addr)
            return False
        return True

    def next_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def messages_to_send(self) -> list[Outgoing]:
        """What to send now, each with its address and transport."""
        self._settle()
        out = list(self._outgoing)
        self._outgoing.clear()  # in place: the transactions' sinks hold this list
        return out

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """``messages_to_send`` without the transport (for callers that only use one)."""
        return [(m.data, m.addr) for m in self.messages_to_send()]

    def start_registration(self, registration: Registration, registrar: Address) -> None:
        """Register (and keep registering) ``registration`` at ``registrar`` (an IP address and port)."""
        self.registration = registration
        self.registrar = registrar

    def get_timer(self) -> float | None:
        self._settle()
        reg = self.registration.deadline() if self.registration is not None else None
        tx = self._tx_timer()
        jobs = [w for job, _, _ in self._transfers.values() if (w := job.deadline()) is not None]
        if jobs:
            tx = min(jobs + ([tx] if tx is not None else []))
        if reg is None or (tx is not None and tx < reg):
            return tx
        return reg

    def _tx_timer(self) -> float | None:
        heap = self._timers
        while heap:
            when, _, key = heap[0]
            entry = self._transactions.get(key)
            if entry is not None and entry[0].deadline() == when:
                return when
            heapq.heappop(heap)  # stale: the transaction ended or its deadline moved
        return None

    def handle_timer(self, now: float) -> None:
        self._now = now
        self._settle()
        if self.registration is not None:
            self.registration.handle_timer(now)
            self._pump_registration(now)
        heap = self._timers
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            entry = self._transactions.get(key)
            if entry is None or entry[0].deadline() != when:
                continue
            tx = entry[0]
            self._apply(key, tx, tx.handle_timers(now))
            self._touched.add(key)
        for call_id, (job, _, _) in list(self._transfers.items()):
            job.handle_timer(now)
            self._flush_transfer(call_id)
        self._settle()

    # -- call-layer API -------------------------------------------------------------
    def answer(self, call_id: str, sdp: bytes, now: float) -> None:
        """Send 200 OK with our SDP answer; retransmitted until the ACK arrives."""
        call = self._calls.get(call_id)
        if call is None or call.answered or call.ended:
            return
        call.answered = True
        call.last_answer = sdp
        extra = [("Contact", self._contact(call.dialog.transport)), ("Allow", ", ".join(SERVED)),
                 ("Server", self.config.user_agent), ("Content-Type", "application/sdp")]
        extra += [("Record-Route", rr) for rr in call.invite.headers.get_all("Record-Route")]
        extra += session_timer_headers(call.session_expires)
        resp = response_for(call.invite, 200, to_tag=call.dialog.local_tag, extra=extra, body=sdp)
        call.invite_tx.handle(Input.SUCCESS, now, resp.serialize())
        self._touched.add(call.invite_branch_key)
        self._settle()

    def progress(self, call_id: str, sdp: bytes, now: float) -> None:
        """183 Session Progress with our SDP answer: early media flows before (or instead of) the 200.

        Unreliable (no 100rel): a lost 183 costs the caller only the early audio; the 200
        that may follow carries the same answer.
        """
        call = self._calls.get(call_id)
        if call is None or call.answered or call.ended:
            return
        extra = [("Contact", self._contact(call.dialog.transport)), ("Allow", ", ".join(SERVED)),
                 ("Server", self.config.user_agent), ("Content-Type", "application/sdp")]
        extra += [("Record-Route", rr) for rr in call.invite.headers.get_all("Record-Route")]
        resp = response_for(call.invite, 183, to_tag=call.dialog.local_tag, extra=extra, body=sdp)
        call.invite_tx.handle(Input.PROVISIONAL, now, resp.serialize())
        self._touched.add(call.invite_branch_key)
        self._settle()

    def reject(self, call_id: str, status: int, now: float, extra: list[tuple[str, str]] | None = None) -> None:
        call = self._calls.get(call_id)
        if call is None or call.answered or call.ended:
            return
        resp = response_for(call.invite, status, to_tag=call.dialog.local_tag, extra=extra or [])
        call.invite_tx.handle(Input.FAILURE, now, resp.serialize())
        self._touched.add(call.invite_branch_key)
        call.ended = True
        self._settle()

    def hangup(self, call_id: str, now: float) -> None:
        """End an answered call with BYE (or reject it if not answered yet)."""
        call = self._calls.get(call_id)
        if call is None or call.ended:
            return
        if not call.answered:
            self.reject(call_id, 480, now)
            self._events.append(CallEnded(call_id, "local-reject"))
            return
        call.ended = True
        self._end_transfer(call_id)
        branch = new_branch()
        transport = call.dialog.transport
        via = f"SIP/2.0/{transport} {self._hostport(transport)};branch={branch};rport"
        bye = call.dialog.build_request("BYE", via, self._contact(transport), [("User-Agent", self.config.user_agent)])
        dest = self._destination(call.dialog)
        key = f"{branch}:BYE"
        call.bye_key = key
        self._call_of_tx[key] = call_id
        tx = NonInviteClientTransaction.start(key, bye.serialize(), now, reliable=transport != "UDP")
        self._add_tx(key, tx, dest, transport)
        self._events.append(CallEnded(call_id, "local-bye"))
        self._settle()

    def transfer(self, call_id: str, refer_to: str, now: float, timeout_s: float = 30.0) -> None:
        """Blind-transfer an answered call (REFER in its dialog, RFC 3515); ``TransferEvent``s
        follow. The caller ends the call (``hangup``) when the transfer succeeds."""
        call = self._calls.get(call_id)
        if call is None or call.ended:
            raise KeyError(call_id)
        if not call.answered:
            raise RuntimeError("only an answered call can be transferred")
        if call_id in self._transfers and self._transfers[call_id][0].outcome is None:
            raise RuntimeError("a transfer is already in progress")
        transport = call.dialog.transport
        job = BlindTransfer(call.dialog, refer_to, NameAddr.parse(call.dialog.local_party).uri,
                            self._hostport(transport), self._contact(transport), transport, timeout_s)
        job.start(now)
        self._transfers[call_id] = (job, self._destination(call.dialog), transport)
        self._flush_transfer(call_id)

    def _flush_transfer(self, call_id: str) -> None:
        """What a transfer job queued, out; its events up; forgotten once over."""
        job, addr, transport = self._transfers[call_id]
        for data in job.take_outbox():
            self._outgoing.append(Outgoing(data, addr, transport))
        self._events.extend(job.events)  # type: ignore[arg-type]
        job.events.clear()
        if job.done:
            del self._transfers[call_id]

    def _end_transfer(self, call_id: str) -> None:
        if call_id in self._transfers:
            self._transfers[call_id][0].abandon("the call ended")
            self._flush_transfer(call_id)

    @property
    def awaiting_responses(self) -> int:
        """Requests we sent (BYEs) that have no final response yet."""
        return sum(1 for tx, _ in self._transactions.values()
                   if isinstance(tx, NonInviteClientTransaction) and tx.state in (State.TRYING, State.PROCEEDING))

    @property
    def active_calls(self) -> int:
        return sum(1 for c in self._calls.values() if not c.ended)

    # -- requests -------------------------------------------------------------------
    def _receive_request(self, req: Request, addr: Address, now: float) -> None:
        self._request_key = None
        top_via = req.headers.get("Via") or ""
        via = Via.parse(top_via)
        self._stamp_via(req, via, addr)
        key = self._tx_key(req, via)
        self._request_key = key

        if req.method == "ACK":
            self._receive_ack(req, key, now)
            return
        existing = self._transactions.get(key)
        if existing is not None:  # a retransmission: the transaction replays its last response
            tx, _ = existing
            tx.handle(Input.REQUEST, now)
            self._touched.add(key)
            return
        if self._locked_out(req, key, addr, now):
            return
        if req.method in SERVED and not self._inspect_headers(req, key, addr, now):
            return

        if req.method == "INVITE":
            self._receive_invite(req, key, addr, now)
        elif req.method == "CANCEL":
            self._receive_cancel(req, key, addr, now)
        elif req.method == "BYE":
            self._receive_bye(req, key, addr, now)
        elif req.method in ("UPDATE", "INFO"):
            self._receive_in_dialog(req, key, addr, now)
        elif req.method == "OPTIONS":
            status = 200 if self.accepting else 503
            extra = self._capabilities()
            if status == 503:
                extra.append(("Retry-After", str(self.retry_after)))
            self._respond_new(req, key, addr, now, status, extra)
        elif req.method == "NOTIFY" and req.call_id in self._transfers:  # our REFER's subscription
            job = self._transfers[req.call_id][0]
            tx = self._server_tx(req, key)
            self._add_tx(key, tx, addr)
            resp = job.on_notify(req, now)
            tx.handle(response_input(resp.status), now, resp.serialize())
            self._flush_transfer(req.call_id)
        elif req.method in KNOWN_UNSERVED:
            self._respond_new(req, key, addr, now, 405, [("Allow", ", ".join(SERVED))])
        else:
            self._respond_new(req, key, addr, now, 501, [("Allow", ", ".join(SERVED))])

    def _locked_out(self, req: Request, key: str, addr: Address, now: float) -> bool:
        """A source locked out for guessing passwords: 403 (or silence) to all but BYE and CANCEL."""
        auth = self.authenticator
        if auth is None or auth.lockout is None or req.method in ("BYE", "CANCEL"):
            return False
        if not auth.lockout.locked(addr[0], now):
            return False
        if auth.lockout_silent:
            tx = self._server_tx(req, key)
            self._add_tx(key, tx, addr)  # absorbs retransmissions; sends nothing
            tx.handle(Input.FAILURE, now, None)
        else:
            self._respond_new(req, key, addr, now, 403)
        return True

    def _inspect_headers(self, req: Request, key: str, addr: Address, now: float) -> bool:
        """RFC 3261 §8.2.2: the Request-URI's scheme (416) and Require (420) of a method we serve.

        False: answered here. CANCEL is never refused over Require (§8.2.2.3).
        """
        scheme = req.uri.partition(":")[0].lower()
        if scheme not in ("sip", "sips"):
            self._respond_new(req, key, addr, now, 416)
            return False
        refusal = bad_extension(req)
        if refusal is not None:
            self._respond_new(req, key, addr, now, 420, refusal)
            return False
        return True

    def _receive_invite(self, req: Request, key: str, addr: Address, now: float) -> None:
        to = NameAddr.parse(req.headers.get("To") or "")
        NameAddr.parse(req.headers.get("From") or "")  # validates: a bad From is a 400
        # The addresses our BYE will use must be SIP URIs we can route to: check them now (400).
        for value in [req.headers.get("Contact") or "", *req.headers.get_all("Record-Route")]:
            if value and value.strip() != "*":
                SipUri.parse(NameAddr.parse(value).uri)
        existing = self._calls.get(req.call_id)
        if to.tag is not None:
            self._receive_reinvite(req, key, addr, now, existing, to.tag)
            return
        if existing is not None:
            # same Call-ID, new transaction, no To-tag: a looped or merged request (§8.2.2.2)
            self._respond_new(req, key, addr, now, 482)
            return
        tx = InviteServerTransaction(key=key, reliable=self._reliable)
        self._add_tx(key, tx, addr)
        if self.admission is not None and not self.admission.take_invite(addr[0], now):
            tx.handle(Input.FAILURE, now, response_for(
                req, 503, "Service Unavailable - rate limited", to_tag=new_tag(),
                extra=[("Retry-After", str(self.retry_after))]).serialize())
            return
        if self.authenticator is not None:
            verdict = self.authenticator.judge(req, now)
            lockout = self.authenticator.lockout
            if verdict.outcome == "failed" and lockout is not None and lockout.failure(addr[0], verdict.username, now):
                log.warning("locked out %s for %d s: more than %d failed digest answers in %d s (last username %r)",
                            addr[0], lockout.policy.lockout_s, lockout.policy.max_failures,
                            lockout.policy.window_s, verdict.username[:64])
                if self.authenticator.lockout_silent:
                    tx.handle(Input.FAILURE, now, None)  # ends the transaction; nothing is sent
                else:
                    tx.handle(Input.FAILURE, now, response_for(req, 403, to_tag=new_tag()).serialize())
                return
            if verdict.outcome != "ok":
                tx.handle(Input.FAILURE, now, response_for(
                    req, 401, to_tag=new_tag(),
                    extra=self.authenticator.challenges(now, verdict.outcome == "stale")).serialize())
                return
        if not _accepts_sdp(req):
            # The caller cannot take an SDP answer (RFC 3261 §8.2.3, RFC 4475 §3.3.15)
            tx.handle(Input.FAILURE, now, response_for(req, 406, to_tag=new_tag(), extra=[
                ("Accept", ACCEPT), ("Warning", f'399 {self._hostport()} "an answer needs application/sdp"'),
            ]).serialize())
            return
        tx.handle(Input.PROVISIONAL, now, response_for(req, 100).serialize())
        if not self.accepting:  # draining or full
            tx.handle(Input.FAILURE, now, response_for(
                req, 503, to_tag=new_tag(), extra=[("Retry-After", str(self.retry_after))]).serialize())
            return
        ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not req.body or ctype != "application/sdp":
            # No offer in the INVITE (offer in the 2xx, answer in ACK) is not supported yet.
            status = 415 if req.body else 488
            extra = [("Accept", ACCEPT)] if status == 415 else []
            tx.handle(Input.FAILURE, now, response_for(req, status, to_tag=new_tag(), extra=extra).serialize())
            return
        try:
            offer = parse_sdp(req.body)
        except SdpError as exc:
            tx.handle(Input.FAILURE, now, response_for(
                req, 488, f"Not Acceptable Here - {exc}"[:80], to_tag=new_tag()).serialize())
            return
        session_expires, too_small = _session_interval(req)
        if too_small:
            tx.handle(Input.FAILURE, now, response_for(
                req, 422, "Session Interval Too Small", to_tag=new_tag(),
                extra=[("Min-SE", str(MIN_SE))]).serialize())
            return
        dialog = Dialog.from_invite(req, new_tag(), addr)
        dialog.transport = self._current_transport
        call = _Call(dialog, req, tx, key, session_expires=session_expires)
        self._calls[req.call_id] = call
        self._call_of_tx[key] = req.call_id
        self._events.append(IncomingCall(req.call_id, _dialed(req), _user_of(req.headers.get("From")), req, offer,
                                         addr, session_expires))

    def _receive_reinvite(self, req: Request, key: str, addr: Address, now: float,
                          call: _Call | None, to_tag: str) -> None:
        if self._in_dialog(req, key, addr, now, call, to_tag):
            assert call is not None
            self._start_update(req, key, addr, now, call, self._server_tx(req, key))

    def _in_dialog(self, req: Request, key: str, addr: Address, now: float, call: _Call | None,
                   to_tag: str | None) -> bool:
        """A request inside our dialog, in CSeq order; otherwise answered 481 or 500 here."""
        if call is None or call.ended or to_tag != call.dialog.local_tag:
            self._respond_new(req, key, addr, now, 481)
            return False
        cseq, _ = req.cseq
        if cseq <= call.dialog.remote_cseq:
            self._respond_new(req, key, addr, now, 500, [("Retry-After", "1")])
            return False
        call.dialog.remote_cseq = cseq
        return True

    def _start_update(self, req: Request, key: str, addr: Address, now: float, call: _Call,
                      tx: _Transaction) -> None:
        """re-INVITE or UPDATE: hand the offer to the call layer, which answers with answer_update."""
        self._add_tx(key, tx, addr)
        if req.method == "INVITE":
            tx.handle(Input.PROVISIONAL, now, response_for(req, 100).serialize())
        if call.pending_update is not None:  # an offer of theirs is still unanswered: 500 with Retry-After
            # (RFC 3261 §14.2, RFC 3311 §5.2; 491 is for crossing an offer of ours, and we make none)
            tx.handle(Input.FAILURE, now, response_for(req, 500, extra=[("Retry-After", "1")]).serialize())
            return
        offer = None
        if req.body:
            try:
                offer = parse_sdp(req.body)
            except SdpError as exc:
                tx.handle(Input.FAILURE, now, response_for(req, 488, f"Not Acceptable Here - {exc}"[:80]).serialize())
                return
        se, too_small = _session_interval(req)
        if too_small:
            tx.handle(Input.FAILURE, now, response_for(
                req, 422, "Session Interval Too Small", extra=[("Min-SE", str(MIN_SE))]).serialize())
            return
        call.pending_update = (key, req)  # (the interval is agreed by the 200: refreshed_interval)
        self._events.append(SessionUpdate(call.dialog.call_id, req.method, offer, se))

    def answer_update(self, call_id: str, sdp: bytes, now: float) -> None:
        """200 to the pending re-INVITE/UPDATE, with our SDP (none, b"", for an UPDATE without an offer)."""
        self._finish_update(call_id, 200, now, sdp)

    def reject_update(self, call_id: str, status: int, now: float) -> None:
        """Refuse the pending re-INVITE/UPDATE (e.g. 488); the session stays as it was."""
        self._finish_update(call_id, status, now, b"")

    def _finish_update(self, call_id: str, status: int, now: float, sdp: bytes) -> None:
        call = self._calls.get(call_id)
        if call is None or call.pending_update is None:
            return
        key, req = call.pending_update
        call.pending_update = None
        entry = self._transactions.get(key)
        if entry is None:
            return
        extra = [("Contact", self._contact(call.dialog.transport))]
        if status == 200:
            if sdp:
                call.last_answer = sdp
                extra.append(("Content-Type", "application/sdp"))
            call.session_expires = refreshed_interval(req)
            extra += session_timer_headers(call.session_expires)
        resp = response_for(req, status, extra=extra, body=sdp if status == 200 else b"")
        entry[0].handle(response_input(status), now, resp.serialize())
        self._touched.add(key)
        self._settle()

    def session_expires(self, call_id: str) -> int | None:
        call = self._calls.get(call_id)
        return call.session_expires if call is not None else None


    def _receive_ack(self, req: Request, key: str, now: float) -> None:
        # ACK for a non-2xx shares the INVITE's branch; ACK for a 2xx is a new transaction
        # and is matched by its dialog (Call-ID).
        invite_key = key.rsplit(":", 1)[0] + ":INVITE"
        entry = self._transactions.get(invite_key)
        if entry is None:
            call = self._calls.get(req.call_id)
            if call is None:
                return
            entry = self._transactions.get(call.invite_branch_key)
            if entry is None:
                return
            invite_key = call.invite_branch_key
        tx, _ = entry
        self._apply(invite_key, tx, tx.handle(Input.ACK, now))
        self._touched.add(invite_key)

    def _receive_cancel(self, req: Request, key: str, addr: Address, now: float) -> None:
        invite_key = key.rsplit(":", 1)[0] + ":INVITE"
        entry = self._transactions.get(invite_key)
        call = self._calls.get(req.call_id)
        if entry is None or call is None or call.invite_branch_key != invite_key:
            # No INVITE transaction of this call matches (RFC 3261 §9.2: branch and sent-by): a
            # CANCEL matching some other transaction with the same Call-ID (say a merged INVITE
            # answered 482) must not end this call.
            self._respond_new(req, key, addr, now, 481)
            return
        self._respond_new(req, key, addr, now, 200)
        tx, _ = entry
        if not call.answered and not call.ended:
            call.ended = True
            resp = response_for(call.invite, 487, to_tag=call.dialog.local_tag)
            tx.handle(Input.FAILURE, now, resp.serialize())
            self._touched.add(invite_key)
            self._events.append(CallEnded(req.call_id, "cancel"))

    def _receive_in_dialog(self, req: Request, key: str, addr: Address, now: float) -> None:
        call = self._calls.get(req.call_id)
        if not self._in_dialog(req, key, addr, now, call, NameAddr.parse(req.headers.get("To") or "").tag):
            return
        assert call is not None
        if req.method == "INFO":
            self._respond_new(req, key, addr, now, 200)
            ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            self._events.append(InfoReceived(req.call_id, ctype, req.body))
            return
        self._start_update(req, key, addr, now, call, self._server_tx(req, key))

    def _receive_bye(self, req: Request, key: str, addr: Address, now: float) -> None:
        call = self._calls.get(req.call_id)
        to_tag = NameAddr.parse(req.headers.get("To") or "").tag
        if call is None or to_tag != call.dialog.local_tag:
            self._respond_new(req, key, addr, now, 481)
            return
        self._respond_new(req, key, addr, now, 200)
        if not call.ended:
            call.ended = True
            self._end_transfer(req.call_id)
            if not call.answered:  # BYE before our 2xx: RFC 3261 §15.1.2, answer the INVITE with 487
                call.invite_tx.handle(Input.FAILURE, now, response_for(
                    call.invite, 487, to_tag=call.dialog.local_tag).serialize())
                self._touched.add(call.invite_branch_key)
            self._events.append(CallEnded(req.call_id, "remote-bye"))
            self._forget_if_finished(call)

    def _respond_new(self, req: Request, key: str, addr: Address, now: float, status: int,
                     extra: list[tuple[str, str]] | None = None) -> None:
        tx = self._server_tx(req, key)
        self._add_tx(key, tx, addr)
        # response_for keeps a To-tag that is already there (BYE, CANCEL in a dialog)
        to_tag = None if status == 100 else new_tag()
        resp = response_for(req, status, to_tag=to_tag, extra=(extra or []) + [("Server", self.config.user_agent)])
        tx.handle(response_input(status), now, resp.serialize())
        # (wire order is kept: this answer is queued before anything it causes, e.g. 200 CANCEL then 487)

    # -- responses (to our BYE) -------------------------------------------------------
    def _receive_response(self, resp: Response, now: float) -> None:
        via = Via.parse(resp.headers.get("Via") or "")
        _, method = resp.cseq
        if method == "REFER" and resp.call_id in self._transfers:
            self._transfers[resp.call_id][0].on_response(resp, now)
            self._flush_transfer(resp.call_id)
            return
        key = f"{via.branch}:{method}"
        entry = self._transactions.get(key)
        if entry is None:
            # A retransmitted 2xx to an INVITE we never sent, or a stray response: ignore.
            return
        tx, _ = entry
        final_before = tx.state not in (State.TRYING, State.PROCEEDING)
        self._apply(key, tx, tx.handle(response_input(resp.status), now))
        self._touched.add(key)
        reg = self.registration
        if reg is not None and method == "REGISTER" and via.branch == reg.pending_branch and not final_before:
            reg.on_response(resp, now)
            self._pump_registration(now)

    def _pump_registration(self, now: float) -> None:
        reg = self.registration
        if reg is None or not reg.outbox or self.registrar is None:
            return
        for data in reg.outbox:
            key = f"{reg.pending_branch}:REGISTER"
            self._add_tx(key, NonInviteClientTransaction.start(key, data, now), self.registrar, "UDP")
        reg.outbox.clear()

    # -- helpers ------------------------------------------------------------------
    def _apply(self, key: str, tx: _Transaction, events: list[TuEvent]) -> None:
        call_id = self._call_of_tx.get(key)
        call = self._calls.get(call_id) if call_id is not None else None
        for ev in events:
            if ev is TuEvent.ACK_RECEIVED:
                if call is not None and call.answered and not call.ended:
                    self._events.append(CallConfirmed(call.dialog.call_id))
            elif ev is TuEvent.ACK_TIMEOUT:
                if call is not None and not call.ended:
                    call.ended = True
                    self._events.append(CallEnded(call.dialog.call_id, "ack-timeout"))
            elif ev is TuEvent.TIMEOUT:
                log.info("no response to our request %s", key)
                reg = self.registration
                if reg is not None and key == f"{reg.pending_branch}:REGISTER":
                    reg.on_timeout(self._now)
                    self._pump_registration(self._now)
            elif ev is TuEvent.TERMINATED:
                self._transactions.pop(key, None)
                self._call_of_tx.pop(key, None)
                if call is not None:
                    self._forget_if_finished(call)

    def _drop_unanswered_call(self, key: str) -> None:
        call_id = self._call_of_tx.get(key)
        call = self._calls.get(call_id) if call_id is not None else None
        if call is not None and not call.answered:
            call.ended = True

    def _forget_if_finished(self, call: _Call) -> None:
        if not call.ended:
            return
        entry = self._transactions.get(call.invite_branch_key)
        if entry is not None and entry[0] is call.invite_tx:
            return
        if call.bye_key is not None and call.bye_key in self._transactions:
            return
        if self._calls.get(call.dialog.call_id) is call:
            del self._calls[call.dialog.call_id]

    def _add_tx(self, key: str, tx: _Transaction, addr: Address, transport: str | None = None) -> None:
        """Register a transaction; what it sends goes straight to the outgoing queue, over
        ``transport`` (default: that of the request being handled)."""
        transport = transport or self._current_transport
        for data in tx.outbox:
            self._outgoing.append(Outgoing(data, addr, transport))
        tx.outbox = _Sink(self._outgoing, addr, transport)
        self._transactions[key] = (tx, addr)
        self._touched.add(key)

    def _settle(self) -> None:
        """Put the deadlines of the transactions touched since the last call into the timer heap."""
        for key in self._touched:
            entry = self._transactions.get(key)
            if entry is not None:
                when = entry[0].deadline()
                if when is not None:
                    self._seq += 1
                    heapq.heappush(self._timers, (when, self._seq, key))
        self._touched.clear()

    def _send_response(self, resp: Response, addr: Address) -> None:
        self._outgoing.append(Outgoing(resp.serialize(), addr, self._current_transport))

    @staticmethod
    def _stamp_via(req: Request, via: Via, addr: Address) -> None:
        """Add received/rport to the top Via (RFC 3261 §18.2.1, RFC 3581)."""
        changed = False
        if "rport" in via.params:
            via.params["rport"] = str(addr[1])
            via.params["received"] = addr[0]
            changed = True
        elif via.host.strip("[]") != addr[0]:
            via.params["received"] = addr[0]
            changed = True
        if changed:
            items = req.headers.items
            first = next(i for i, (name, _) in enumerate(items) if name == "Via")
            items[first] = ("Via", str(via))

    def _tx_key(self, req: Request, via: Via) -> str:
        """RFC 3261 §17.2.3 matching (branch, sent-by, method), narrowed by transport, Call-ID and
        CSeq number: a peer that reuses a branch for another request (RFC 4475 replays do) gets
        that request processed, not the other one's response replayed."""
        method = "INVITE" if req.method == "ACK" else req.method
        branch = via.branch
        if branch and branch.startswith("z9hG4bK") and len(branch) > 7:  # a bare magic cookie: RFC 4475 §3.2.1
            return f"{branch}|{via.host}:{via.port}|{self._current_transport}|{req.call_id}|{req.cseq[0]}:{method}"
        # RFC 2543 peer: match on the request's identity instead (§17.2.3)
        cseq, _ = req.cseq
        from_tag = NameAddr.parse(req.headers.get("From") or "").tag
        return f"{req.call_id}|{cseq}|{from_tag}|{via.host}:{via.port}|{self._current_transport}:{method}"

    def _destination(self, dialog: Dialog) -> Address:
        try:
            return self._route_destination(dialog)
        except ValueError:  # checked at INVITE time; never fail a hangup over it
            return dialog.source

    def _route_destination(self, dialog: Dialog) -> Address:
        if dialog.transport != "UDP":
            # Over a stream we answer on the connection the call came in on (the peer may be
            # behind NAT and not listening where its Contact says).
            return dialog.source
        uri = SipUri.parse(dialog.next_hop_uri())
        host = uri.params.get("maddr") or uri.host
        if not _is_ip(host.strip("[]")):
            host = dialog.source[0]  # no resolver in the core: fall back to where the INVITE came from
        return host.strip("[]"), uri.port or 5060

    def _hostport(self, transport: str = "UDP") -> str:
        host = self.config.advertised_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = self.config.tls_port if transport == "TLS" and self.config.tls_port else self.config.port
        return f"{host}:{port}"

    def _contact(self, transport: str = "UDP") -> str:
        param = "" if transport == "UDP" else f";transport={transport.lower()}"
        return f"<sip:sip-tts@{self._hostport(transport)}{param}>"

    def _capabilities(self) -> list[tuple[str, str]]:
        caps = [("Allow", ", ".join(SERVED)), ("Accept", ACCEPT)]
        caps.append(("Supported", SUPPORTED))
        return caps


def session_timer_headers(expires: int | None) -> list[tuple[str, str]]:
    """A 2xx's RFC 4028 headers for an agreed interval (the far end refreshes; none when no timer)."""
    if expires is None:
        return []
    return [("Session-Expires", f"{expires};refresher=uac"), ("Require", "timer"), ("Supported", SUPPORTED)]


def bad_extension(req: Request) -> list[tuple[str, str]] | None:
    """RFC 3261 §8.2.2.3: the ``Unsupported`` header of a 420 for a request whose Require names an
    option we do not support (None: none does). CANCEL and ACK are never refused over Require.
    The one check of inbound calls (``UserAgent``) and placed calls (outbound.py)."""
    if req.method in ("CANCEL", "ACK"):
        return None
    unsupported = [opt for value in req.headers.get_all("Require") for opt in
                   (o.strip() for o in value.split(",")) if opt and opt.lower() not in SUPPORTED_OPTIONS]
    return [("Unsupported", ", ".join(unsupported))] if unsupported else None


def refreshed_interval(req: Request) -> int | None:
    """RFC 4028: the session interval a 2xx to this re-INVITE/UPDATE agrees to (inbound and placed
    calls). Every session refresh negotiates the timer anew (§9, UAS behaviour, is the same for a
    refresh as for the initial INVITE; §7.4: a 2xx without Session-Expires means no session
    expiration): one without Session-Expires, or one asking us to refresh (we never send
    refreshes, so we do not insert one with refresher=uas), turns the timer off. An interval
    agreed earlier is not carried over. Called once the request is known to be well formed."""
    return _session_interval(req)[0]


def _session_interval(req: Request) -> tuple[int | None, bool]:
    """RFC 4028: the interval we agree to (None: no session timer), and whether it is below Min-SE.

    We take part only when the caller supports timers and leaves refreshing to itself
    (refresher=uac or unset): we never send refreshes.
    """
    value = req.headers.get("Session-Expires")
    if not value:
        return None, False
    number, _, params = value.partition(";")
    if not number.strip().isdigit():
        raise ValueError(f"bad Session-Expires {value!r}")
    seconds = int(number.strip())
    if seconds < MIN_SE:
        return None, True
    supported = {t.strip().lower() for v in req.headers.get_all("Supported") for t in v.split(",")}
    refresher = ""
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher":
            refresher = val.strip().lower()
    if "timer" not in supported or refresher == "uas":
        return None, False
    return seconds, False


def _accepts_sdp(req: Request) -> bool:
    """Whether the request's Accept (absent: application/sdp, RFC 3261 §20.1) allows an SDP answer."""
    values = req.headers.get_all("Accept")
    if not values:
        return True
    for value in values:
        for item in value.split(","):
            media = item.split(";")[0].strip().lower()
            if media in ("application/sdp", "application/*", "*/*") or (not media and len(values) == 1):
                return True
    return False


def _user_of(value: str | None) -> str:
    if not value:
        return ""
    try:
        return SipUri.parse(NameAddr.parse(value).uri).user or ""
    except ValueError:
        return ""


def _dialed(req: Request) -> str:
    try:
        user = SipUri.parse(req.uri).user
    except ValueError:
        user = None
    return user or _user_of(req.headers.get("To"))
