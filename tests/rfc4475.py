"""The RFC 4475 torture messages and what this server (a UAS: no proxy, no registrar) answers.

One row per message: its RFC section, the answer over UDP, and the answer over TCP or
None where the message's framing cannot be carried on a stream. An answer is a status
code, ``"drop"`` (no response: responses that match nothing, unusable status lines) or,
over TCP only, ``"400+close"`` (framing error: answered, then the connection closed:
RFC 4475 §3.1.2.3, §3.3.9). An INVITE that opens a call expects 200. Where the RFC allows
a choice, the comment says which we make.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rfc4475"

Answer = int | str


@dataclass(frozen=True)
class Case:
    name: str
    section: str
    udp: Answer
    tcp: Answer | None
    why: str

    @property
    def data(self) -> bytes:
        return (FIXTURES / f"{self.name}.dat").read_bytes()


CASES = [
    # 3.1.1 valid: parsed and answered as the method asks
    Case("wsinv", "3.1.1.1", 481, 481, "well-formed INVITE with a To-tag of no dialog of ours"),
    Case("intmeth", "3.1.1.2", 501, 501, "unknown method: 501 with Allow"),
    Case("esc01", "3.1.1.3", 200, 200, "INVITE answered: a call"),
    Case("escnull", "3.1.1.4", 405, 405, "REGISTER: not a registrar, 405 with Allow"),
    Case("esc02", "3.1.1.5", 501, 501, "RE%47IST%45R is not REGISTER: unknown method"),
    Case("lwsdisp", "3.1.1.6", 200, 200, "OPTIONS"),
    Case("longreq", "3.1.1.7", 200, 200, "INVITE answered: a call"),
    Case("dblreq", "3.1.1.8", 405, None,
         "REGISTER, trailing octets ignored (UDP only: on TCP they are a next message)"),
    Case("semiuri", "3.1.1.9", 200, 200, "OPTIONS"),
    Case("transports", "3.1.1.10", 200, 200, "OPTIONS"),
    Case("mpart01", "3.1.1.11", 405, 405, "MESSAGE: known, not served"),
    Case("unreason", "3.1.1.12", "drop", "drop", "a response to nothing we sent"),
    Case("noreason", "3.1.1.13", "drop", "drop", "a response to nothing we sent"),
    # 3.1.2 invalid: 400 (we take the strict choice wherever the RFC allows leniency)
    Case("badinv01", "3.1.2.1", 400, 400, "empty Via/Contact parameters"),
    Case("clerr", "3.1.2.2", 400, None, "Content-Length past the datagram (TCP: waits for the rest)"),
    Case("ncl", "3.1.2.3", 400, "400+close", "negative Content-Length (TCP: 400, then closed)"),
    Case("scalar02", "3.1.2.4", 400, 400, "CSeq number over 2**31"),
    Case("scalarlg", "3.1.2.5", "drop", "drop", "a response with overlarge values: discarded"),
    Case("quotbal", "3.1.2.6", 400, 400, "unterminated quoted display name (strict)"),
    Case("ltgtruri", "3.1.2.7", 400, 400, "<> around the Request-URI (strict)"),
    Case("lwsruri", "3.1.2.8", 400, 400, "LWS inside the Request-URI (strict)"),
    Case("lwsstart", "3.1.2.9", 400, 400, "several SP in the request line (strict)"),
    Case("trws", "3.1.2.10", 400, 400, "SP at the end of the request line (strict)"),
    Case("escruri", "3.1.2.11", 400, 400, "escaped headers in the Request-URI (strict)"),
    Case("baddate", "3.1.2.12", 400, 400, "Date not in GMT (strict)"),
    Case("regbadct", "3.1.2.13", 400, 400, "Contact URI with headers outside <> (strict)"),
    Case("badaspec", "3.1.2.14", 400, 400, "spaces inside <addr-spec> (strict)"),
    Case("baddn", "3.1.2.15", 400, None, "unquoted non-token display name (no end of headers: UDP only)"),
    Case("badvers", "3.1.2.16", 505, 505, "SIP/7.0"),
    Case("mismatch01", "3.1.2.17", 400, 400, "CSeq method differs from a known method"),
    Case("mismatch02", "3.1.2.18", 501, 501, "unknown method, CSeq differs: 501 (preferred)"),
    Case("bigcode", "3.1.2.19", "drop", "drop", "response code over 699: dropped"),
    # 3.2 transaction layer
    Case("badbranch", "3.2.1", 200, 200, "branch is the bare magic cookie: RFC 2543 matching, OPTIONS answered"),
    # 3.3 application layer
    Case("insuf", "3.3.1", 400, 400, "no Call-ID, From, To: 400 all the same"),
    Case("unkscm", "3.3.2", 416, 416, "unknown Request-URI scheme"),
    Case("novelsc", "3.3.3", 416, 416, "soap.beep: is never meaningful here"),
    Case("unksm2", "3.3.4", 405, 405, "REGISTER to an endpoint that is not a registrar"),
    Case("bext01", "3.3.5", 420, 420, "Require we do not support: 420 with Unsupported"),
    Case("invut", "3.3.6", 415, 415, "unknown Content-Type: 415 with Accept"),
    Case("regaut01", "3.3.7", 405, 405, "REGISTER to a non-registrar endpoint: 405"),
    Case("multi01", "3.3.8", 400, 400, "several From/To/Call-ID/CSeq"),
    Case("mcl01", "3.3.9", 400, "400+close", "conflicting Content-Lengths (TCP: 400, then closed)"),
    Case("bcast", "3.3.10", "drop", "drop", "a 200 to nothing we sent: discarded"),
    Case("zeromf", "3.3.11", 200, 200, "Max-Forwards 0: an endpoint processes it normally"),
    Case("cparam01", "3.3.12", 405, 405, "REGISTER: not a registrar"),
    Case("cparam02", "3.3.13", 405, 405, "REGISTER: not a registrar"),
    Case("regescrt", "3.3.14", 405, 405, "REGISTER: not a registrar"),
    Case("sdp01", "3.3.15", 406, 406, "Accept without application/sdp: 406"),
    # 3.4 backward compatibility
    Case("inv2543", "3.4.1", 200, None, "RFC 2543 INVITE answered: a call (no Content-Length: UDP only)"),
]

VALID = {c.name for c in CASES if c.section.startswith("3.1.1")}
INVALID = {c.name for c in CASES if c.section.startswith("3.1.2")}


def checksums() -> dict[str, str]:
    """name → sha256 of the fixture as listed in SHA256SUMS (the RFC's archive, byte-exact)."""
    out = {}
    for line in (FIXTURES / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        out[name.removesuffix(".dat")] = digest
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table(rows: list[tuple[str, str, Answer, Answer]]) -> str:
    """The (message, section, expected, got) table printed by the tests."""
    lines = [f"{'message':<11} {'section':<9} {'expected':<9} got", "-" * 40]
    lines += [f"{n:<11} {s:<9} {str(e):<9} {g}{'' if e == g else '   <-- MISMATCH'}" for n, s, e, g in rows]
    return "\n".join(lines)
