"""A caller on a plain UDP socket, for tests that need exact control of each message."""

from __future__ import annotations

from telephony.sip.message import Message, Response, parse_message
from tests.sipmsg import LOOPBACK, invite, offer


def wait_for(sock, method: str, status: int = 200) -> Response:
    """The next response to ``method`` with ``status``, skipping everything else."""
    while True:
        msg = parse_message(sock.recvfrom(65535)[0])
        if isinstance(msg, Response) and msg.status == status and msg.cseq[1] == method:
            return msg


def dial(sock, server_port: int, call_id: str, rtp_port: int, **kw) -> Response:
    """INVITE with a loopback offer (media at ``rtp_port``); returns the 200 OK."""
    sock.sendto(invite(call_id=call_id, sdp=offer(LOOPBACK, rtp_port), host=LOOPBACK, **kw),
                ("127.0.0.1", server_port))
    return wait_for(sock, "INVITE")


def to_tag(resp: Message) -> str:
    return (resp.headers.get("To") or "").split("tag=")[1]


def answered_rtp_port(resp: Response) -> int:
    return int(resp.body.decode().split("m=audio ")[1].split()[0])
