import pytest

from telephony.sip.sdp import SdpError, build_answer, negotiate, parse_sdp
from tests.sipmsg import OFFER


def test_pcmu_preferred_and_telephone_event_kept():
    offer = parse_sdp(OFFER.encode())
    chosen, idx = negotiate(offer, ["PCMU", "PCMA"])
    assert (chosen.codec, chosen.payload_type, chosen.dtmf_payload_type) == ("PCMU", 0, 101)
    assert (chosen.remote_host, chosen.remote_port) == ("10.0.0.5", 40000)
    answer = build_answer(offer, chosen, idx, "192.0.2.1", 20000, 42).decode()
    assert "m=audio 20000 RTP/AVP 0 101\r\n" in answer
    assert "c=IN IP4 192.0.2.1" in answer
    assert "a=rtpmap:101 telephone-event/8000" in answer
    assert "a=sendrecv" in answer


def test_preference_order_from_config():
    chosen, _ = negotiate(parse_sdp(OFFER.encode()), ["PCMA", "PCMU"])
    assert (chosen.codec, chosen.payload_type) == ("PCMA", 8)


def test_dynamic_payload_type_for_g711_and_unknown_codecs_ignored():
    sdp = ("v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
           "m=audio 5000 RTP/AVP 96 18 97\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:18 G729/8000\r\n"
           "a=rtpmap:97 PCMA/8000\r\n")
    chosen, _ = negotiate(parse_sdp(sdp.encode()), ["PCMU", "PCMA"])
    assert (chosen.codec, chosen.payload_type, chosen.dtmf_payload_type) == ("PCMA", 97, None)


def test_no_g711_is_an_error():
    sdp = ("v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
           "m=audio 5000 RTP/AVP 18 96\r\na=rtpmap:96 opus/48000/2\r\n")
    with pytest.raises(SdpError):
        negotiate(parse_sdp(sdp.encode()), ["PCMU", "PCMA"])


def test_video_line_refused_with_port_zero_and_media_level_connection():
    sdp = ("v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n"
           "m=video 6000 RTP/AVP 96\r\nc=IN IP4 5.6.7.8\r\na=rtpmap:96 H264/90000\r\n"
           "m=audio 5000 RTP/AVP 0\r\nc=IN IP4 9.9.9.9\r\na=sendonly\r\n")
    offer = parse_sdp(sdp.encode())
    chosen, idx = negotiate(offer, ["PCMU"])
    assert idx == 1 and chosen.remote_host == "9.9.9.9"
    answer = build_answer(offer, chosen, idx, "192.0.2.1", 20000, 1).decode()
    assert "m=video 0 RTP/AVP 96" in answer
    assert answer.index("m=video") < answer.index("m=audio")
    assert "a=recvonly" in answer  # the caller only sends


def test_garbage_sdp():
    with pytest.raises(SdpError):
        parse_sdp(b"hello")
    with pytest.raises(SdpError):
        parse_sdp(b"v=0\r\nm=audio x RTP/AVP 0\r\n")
