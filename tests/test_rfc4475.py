"""RFC 4475 torture messages against the sans-IO parser and user agent (no sockets).

The real-socket replay of the same 49 messages is ``sip_tests/test_rfc4475_replay.py``.
"""

import pytest

from telephony.sip import IncomingCall, Response, SipParseError, parse_message
from telephony.sip.useragent import UserAgent, UserAgentConfig
from tests.rfc4475 import CASES, FIXTURES, INVALID, VALID, checksums, sha256, table

SOURCE = ("127.0.0.1", 5099)
# Parse errors outside 3.1.2: messages that are well framed but whose headers break the rules
PARSE_ERRORS_ELSEWHERE = {"insuf", "multi01", "mcl01"}


def test_the_49_fixtures_are_byte_exact():
    sums = checksums()
    assert len(CASES) == 49 and len(sums) == 49
    assert {c.name for c in CASES} == set(sums)
    assert sorted(p.stem for p in FIXTURES.glob("*.dat")) == sorted(sums)
    for case in CASES:
        assert sha256(case.data) == sums[case.name], case.name
    assert (len(VALID), len(INVALID)) == (13, 19)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_parser(case):
    """Valid messages parse; invalid ones raise SipParseError with what a 4xx/5xx needs (or nothing)."""
    if case.name in INVALID or case.name in PARSE_ERRORS_ELSEWHERE:
        with pytest.raises(SipParseError) as exc:
            parse_message(case.data)
        if case.udp == "drop":
            assert not exc.value.can_respond  # a response: never answered
        else:
            assert exc.value.can_respond and exc.value.status == case.udp, exc.value.reason
    else:
        msg = parse_message(case.data)
        assert msg.headers.get("Via") and msg.headers.get("CSeq")


def test_parser_details():
    """What RFC 4475 says the valid messages mean, beyond "they parse"."""
    wsinv = parse_message(FIXTURES.joinpath("wsinv.dat").read_bytes())
    assert wsinv.method == "INVITE" and wsinv.cseq == (9, "INVITE") and len(wsinv.body) == 150
    assert wsinv.headers.get("Max-Forwards") == "0068" and wsinv.headers.get("Subject") == ""
    assert len(wsinv.headers.get_all("Via")) == 3
    mpart = parse_message(FIXTURES.joinpath("mpart01.dat").read_bytes())
    assert len(mpart.body) == 553 and b"\x00" in mpart.body  # framed by Content-Length, bytes kept
    dbl = parse_message(FIXTURES.joinpath("dblreq.dat").read_bytes())
    assert dbl.method == "REGISTER" and dbl.body == b""  # the trailing INVITE is ignored
    esc02 = parse_message(FIXTURES.joinpath("esc02.dat").read_bytes())
    assert esc02.method == "RE%47IST%45R" and len(esc02.headers.get_all("Contact")) == 2
    unreason = parse_message(FIXTURES.joinpath("unreason.dat").read_bytes())
    assert isinstance(unreason, Response) and unreason.status == 200 and "**" in unreason.reason
    noreason = parse_message(FIXTURES.joinpath("noreason.dat").read_bytes())
    assert isinstance(noreason, Response) and noreason.reason == ""


def answer_of(data: bytes) -> int | str:
    """The final answer of a fresh UA to ``data``: a status, or "drop"; an INVITE call is answered."""
    ua = UserAgent(UserAgentConfig("127.0.0.1", 5060))
    ua.receive_datagram(data, SOURCE, 0.0)
    for ev in ua.next_events():
        if isinstance(ev, IncomingCall):
            ua.answer(ev.call_id, b"v=0\r\n", 0.0)
    # (read from the status line: a 400 copies the CSeq that made the request invalid)
    codes = [int(d.split(b" ", 2)[1]) for d, _ in ua.datagrams_to_send()]
    finals = [c for c in codes if c >= 200]
    assert len(finals) <= 1, finals
    return finals[0] if finals else "drop"


def test_user_agent_answers_every_message_as_the_rfc_expects(capsys):
    rows = [(c.name, c.section, c.udp, answer_of(c.data)) for c in CASES]
    with capsys.disabled():
        print("\nRFC 4475, sans-IO user agent:\n" + table(rows))
    assert [r for r in rows if r[2] != r[3]] == []
