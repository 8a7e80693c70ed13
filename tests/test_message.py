from hypothesis import given, settings, strategies as st
import pytest

from telephony.sip.message import (
    Headers, Request, Response, SipParseError, frame_length, parse_message, response_for, split_commas,
)
from tests.sipmsg import OFFER, invite


def test_parse_invite_with_body():
    msg = parse_message(invite())
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.cseq == (1, "INVITE")
    assert msg.body.decode() == OFFER
    assert msg.headers.get("content-type") == "application/sdp"


def test_compact_names_and_case_insensitive_lookup():
    data = (b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\n"
            b"t: <sip:a@b>\r\ni: abc\r\nCSEQ: 5 OPTIONS\r\nl: 0\r\nk: timer\r\nm: <sip:x@y>\r\n\r\n")
    msg = parse_message(data)
    assert msg.headers.get("Call-ID") == "abc"
    assert msg.headers.get("call-id") == "abc"
    assert msg.headers.get("Supported") == "timer"
    assert msg.headers.get("Contact") == "<sip:x@y>"
    assert msg.cseq == (5, "OPTIONS")


def test_several_via_headers_and_comma_separated_values():
    data = (b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP p1;branch=z9hG4bKa, SIP/2.0/UDP p2;branch=z9hG4bKb\r\n"
            b"Via: SIP/2.0/UDP p3;branch=z9hG4bKc\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>;tag=2\r\n"
            b"Call-ID: c\r\nCSeq: 2 BYE\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\n"
            b"Contact: \"A, B\" <sip:x@y>\r\nContent-Length: 0\r\n\r\n")
    msg = parse_message(data)
    assert [v.split(" ")[1].split(";")[0] for v in msg.headers.get_all("Via")] == ["p1", "p2", "p3"]
    assert msg.headers.get_all("Record-Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]
    assert msg.headers.get_all("Contact") == ['"A, B" <sip:x@y>']  # comma inside quotes is not a separator


def test_split_commas_respects_quotes_and_brackets():
    assert split_commas('<sip:a;x=1,2>, "q, r" <sip:b>') == ["<sip:a;x=1,2>", '"q, r" <sip:b>']


def test_folded_header_lines_are_joined():
    data = (b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\n"
            b"To: <sip:a@b>\r\nCall-ID: abc\r\nSubject: first\r\n  second\r\nCSeq: 1 OPTIONS\r\n\r\n")
    assert parse_message(data).headers.get("Subject") == "first second"


def test_content_length_frames_the_body():
    data = invite().replace(b"\r\n\r\nv=0", b"\r\n\r\nv=0") + b"trailing garbage"
    msg = parse_message(data)
    assert msg.body.decode() == OFFER


def test_body_shorter_than_content_length_is_an_error_that_can_be_answered():
    data = invite()[:-10]
    with pytest.raises(SipParseError) as exc:
        parse_message(data)
    assert exc.value.can_respond
    assert exc.value.request_method == "INVITE"


def test_missing_call_id_is_still_answered_400():
    """RFC 4475 §3.3.1 (insuf): a request without Call-ID/From/To ideally gets 400; Via and CSeq suffice."""
    data = invite().replace(b"Call-ID: call-1\r\n", b"")
    with pytest.raises(SipParseError) as exc:
        parse_message(data)
    assert exc.value.can_respond and exc.value.status == 400
    with pytest.raises(SipParseError) as exc:
        parse_message(invite().replace(b"CSeq: 1 INVITE\r\n", b""))
    assert not exc.value.can_respond


def test_cseq_method_mismatch_is_rejected():
    with pytest.raises(SipParseError, match="CSeq"):
        parse_message(invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"))


def test_bad_version_and_start_line():
    with pytest.raises(SipParseError):
        parse_message(invite().replace(b"SIP/2.0\r\nVia", b"SIP/7.0\r\nVia", 1))
    with pytest.raises(SipParseError):
        parse_message(b"hello world\r\n\r\n")


def test_response_roundtrip_and_reason_default():
    req = parse_message(invite())
    assert isinstance(req, Request)
    resp = response_for(req, 200, to_tag="abc", extra=[("Contact", "<sip:me@h>")], body=b"x=1")
    parsed = parse_message(resp.serialize())
    assert isinstance(parsed, Response)
    assert parsed.status == 200 and parsed.reason == "OK"
    assert parsed.headers.get("To").endswith(";tag=abc")
    assert parsed.headers.get_all("Via") == req.headers.get_all("Via")
    assert parsed.body == b"x=1"
    assert parsed.headers.get("Content-Length") == "3"


def test_request_serialize_parse_roundtrip():
    req = parse_message(invite())
    again = parse_message(req.serialize())
    assert again == req


def test_frame_length_for_streams():
    one = invite()
    assert frame_length(one[:20]) is None
    assert frame_length(one + invite()) == len(one)
    assert frame_length(one[:-5]) is None


def test_headers_set_and_remove():
    h = Headers()
    h.add("via", "a")
    h.add("Via", "b")
    h.set("VIA", "c")
    assert h.get_all("Via") == ["c"]
    h.remove("via")
    assert "Via" not in h


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise_anything_but_parse_errors(data):
    try:
        parse_message(data)
    except SipParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=600), st.binary(min_size=1, max_size=8))
def test_mutated_invites_never_raise_anything_but_parse_errors(pos, junk):
    base = invite()
    data = base[:pos] + junk + base[pos + len(junk):]
    try:
        parse_message(data)
    except SipParseError:
        pass
