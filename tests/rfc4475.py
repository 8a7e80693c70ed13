"""The RFC 4475 torture messages and what this server (a UAS: no proxy, no registrar) answers.

One row per message (fixtures/rfc4475/answers.tsv): its RFC section, the answer over UDP, and the answer over TCP or
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


def _answer(field: str) -> Answer | None:
    return None if field == "-" else int(field) if field.isdigit() else field


def _cases() -> list[Case]:
    """The rows of ``answers.tsv`` (comment lines, starting with #, name the RFC's subsections)."""
    rows = [line.split("\t") for line in (FIXTURES / "answers.tsv").read_text().splitlines()
            if line and not line.startswith("#")]
    return [Case(name, section, _answer(udp), _answer(tcp), why)  # type: ignore[arg-type]
            for name, section, udp, tcp, why in rows]


CASES = _cases()

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
