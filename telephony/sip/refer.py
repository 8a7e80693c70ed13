"""Blind transfer as the transferor (RFC 3515 REFER, RFC 3892 Referred-By).

Sans-IO. ``BlindTransfer`` sends a REFER inside an established dialog (ours as
UAS for an inbound call, or as UAC for an outbound one), then follows the
implicit ``refer`` subscription: every NOTIFY carries a ``message/sipfrag``
whose status line says how the transferee's INVITE to the target is going.
Each NOTIFY is answered 200; the outcome is ``succeeded`` on a 2xx fragment
and ``failed`` (with the code) on a 3xx-6xx fragment, on a refused REFER, on
a subscription that ends without a final fragment, or when no final fragment
arrives within ``timeout_s``. Ending the call after a success is the owner's
job (a BYE in our dialog: the transferee then talks to the target).

An incoming REFER is refused, in every dialog, with ``405 Method Not Allowed`` and our
``Allow`` (RFC 3261 §8.2.1): we are not a phone and never act on one. (An earlier draft
answered 603 Decline, "implemented but refused by policy"; but the Allow header we send in
every INVITE, 200 and OPTIONS answer leaves REFER out, so 405 is what that header already says,
and it is the answer the user agent gives inside inbound calls: one answer for both kinds.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .dialog import Dialog, new_branch
from .digest_client import DigestClient
from .message import Request, Response, response_for
from .transaction import NonInviteClientTransaction, State, TuEvent, response_input
from .uac import branch_of

_SIPFRAG_STATUS = re.compile(r"^SIP/2\.0 ([1-6][0-9]{2})(?: (.*))?$", re.IGNORECASE)
TRANSFER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TransferEvent:
    """Progress of a transfer: ``accepted`` (202), ``progress`` (a 1xx fragment), then one of
    ``succeeded`` / ``failed``. ``status`` is the SIP code behind it (None for our own timeout)."""

    call_id: str
    kind: str
    status: int | None = None
    reason: str = ""


def parse_sipfrag_status(body: bytes) -> tuple[int, str]:
    """The status line of a ``message/sipfrag`` body (RFC 3420): ``SIP/2.0 180 Ringing`` → (180, "Ringing").

    Raises ValueError when the fragment does not start with a SIP status line.
    """
    text = body.decode("utf-8", "replace").lstrip("\r\n")
    first = re.split(r"\r\n|\n", text, maxsplit=1)[0].strip()
    match = _SIPFRAG_STATUS.match(first)
    if not match:
        raise ValueError(f"sipfrag without a status line: {first[:60]!r}")
    return int(match.group(1)), match.group(2) or ""


@dataclass
class BlindTransfer:
    """One REFER and the NOTIFYs that follow it; see the module docstring."""

    dialog: Dialog
    refer_to: str
    referred_by: str
    via_host: str
    contact: str
    transport: str = "UDP"
    timeout_s: float = TRANSFER_TIMEOUT_S
    digest: DigestClient | None = None
    outcome: str | None = None  # "succeeded" / "failed" once known
    accepted: bool = False
    tx: NonInviteClientTransaction | None = None
    tx_key: str = ""
    events: list[TransferEvent] = field(default_factory=list)
    expires_at: float = 0.0
    request: Request | None = None  # the REFER last sent
    refer_cseqs: set[int] = field(default_factory=set)  # CSeq numbers of our REFERs: the NOTIFYs' Event id
    _retired: list[NonInviteClientTransaction] = field(default_factory=list)

    def start(self, now: float) -> None:
        """Send the REFER (into ``tx.outbox``) and start the overall timeout."""
        self.expires_at = now + self.timeout_s
        self._send_refer(now, [])

    def _send_refer(self, now: float, auth: list[tuple[str, str]]) -> None:
        branch = new_branch()
        via = f"SIP/2.0/{self.transport} {self.via_host};branch={branch};rport"
        refer_to = self.refer_to if self.refer_to.startswith("<") else f"<{self.refer_to}>"
        referred_by = self.referred_by if self.referred_by.startswith("<") else f"<{self.referred_by}>"
        req = self.dialog.build_request("REFER", via, self.contact,
                                        [("Refer-To", refer_to), ("Referred-By", referred_by), *auth])
        if self.tx is not None:
            self._retired.append(self.tx)
        self.tx_key = f"{branch}:REFER"
        self.tx = NonInviteClientTransaction.start(self.tx_key, req.serialize(), now,
                                                   reliable=self.transport != "UDP")
        self.request = req
        self.refer_cseqs.add(req.cseq[0])

    @property
    def done(self) -> bool:
        """Outcome known and no transaction left running (the owner may forget it)."""
        return self.outcome is not None and all(t.terminated for t in self._transactions())

    def _transactions(self) -> list[NonInviteClientTransaction]:
        return [t for t in (self.tx, *self._retired) if t is not None]

    def take_outbox(self) -> list[bytes]:
        out: list[bytes] = []
        for tx in self._transactions():
            out.extend(tx.outbox)
            tx.outbox.clear()
        self._retired = [t for t in self._retired if not t.terminated]
        return out

    def deadline(self) -> float | None:
        times = [t.deadline() for t in self._transactions()]
        if self.outcome is None:
            times.append(self.expires_at)
        live = [t for t in times if t is not None]
        return min(live) if live else None

    def handle_timer(self, now: float) -> None:
        for tx in self._transactions():
            if TuEvent.TIMEOUT in tx.handle_timers(now) and tx is self.tx and not self.accepted:
                self._conclude("failed", 408, "no response to REFER")
        if self.outcome is None and now >= self.expires_at:
            self._conclude("failed", None, "no final NOTIFY before the timeout")

    def on_response(self, resp: Response, now: float) -> None:
        """A response to our REFER (the owner matched it by Via branch and CSeq method)."""
        tx = self.tx
        if tx is None or f"{branch_of(resp)}:REFER" != self.tx_key:
            return  # a late answer to a REFER we already re-sent with credentials
        if tx.state in (State.COMPLETED, State.TERMINATED):
            return  # a retransmitted final response
        tx.handle(response_input(resp.status), now)
        if resp.status < 200 or self.outcome is not None:
            return
        if resp.status < 300:
            self.accepted = True
            self.events.append(TransferEvent(self.dialog.call_id, "accepted", resp.status, resp.reason))
            return
        if resp.status in (401, 407) and self.digest is not None:
            auth = self.digest.authorize(resp, "REFER", self.dialog.remote_target)
            if auth:
                self._send_refer(now, auth)
                return
        self._conclude("failed", resp.status, resp.reason or "REFER refused")

    def on_notify(self, req: Request, now: float) -> Response:
        """Answer a NOTIFY of the ``refer`` event, and learn the transfer's state from its sipfrag."""
        event, *params = [p.strip() for p in (req.headers.get("Event") or "").split(";")]
        if event.lower() != "refer":
            return response_for(req, 489, "Bad Event")
        for param in params:  # RFC 3515 §2.4.6: id= is the CSeq of the REFER it reports on
            name, _, value = param.partition("=")
            if name.strip().lower() == "id" and (not value.strip().isdigit() or
                                                  int(value.strip()) not in self.refer_cseqs):
                return response_for(req, 481, "Subscription Does Not Exist")
        content_type = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "message/sipfrag":
            return response_for(req, 415, "Unsupported Media Type", extra=[("Accept", "message/sipfrag")])
        try:
            status, reason = parse_sipfrag_status(req.body)
        except ValueError as exc:
            return response_for(req, 400, f"Bad Request - {exc}"[:80])
        terminated = (req.headers.get("Subscription-State") or "").strip().lower().startswith("terminated")
        if self.outcome is None:
            if status < 200:
                self.accepted = True  # a NOTIFY may overtake the 202 (RFC 3515 §2.4.4)
                self.events.append(TransferEvent(self.dialog.call_id, "progress", status, reason))
                if terminated:
                    self._conclude("failed", status, "subscription ended without a final status")
            elif status < 300:
                self._conclude("succeeded", status, reason)
            else:
                self._conclude("failed", status, reason)
        return response_for(req, 200, "OK")

    def abandon(self, reason: str) -> None:
        """The call ended first: the transfer failed (the REFER's transaction may still finish)."""
        self._conclude("failed", None, reason)

    def _conclude(self, kind: str, status: int | None, reason: str) -> None:
        if self.outcome is None:
            self.outcome = kind
            self.events.append(TransferEvent(self.dialog.call_id, kind, status, reason))

