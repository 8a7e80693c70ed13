"""Every status code the server can send goes out with the RFC's reason phrase.

The expected phrases are written here from the RFCs (not read from the code's table), and
an AST scan of telephony/ finds every status literal handed to a response builder, so a
new code without its phrase fails this test.
"""

import ast
from pathlib import Path

import pytest

from telephony.sip.message import Response, parse_message, response_for
from tests.sipmsg import invite

ROOT = Path(__file__).resolve().parent.parent

# code → phrase, and where it is defined
RFC = {
    100: ("Trying", "RFC 3261 §21.1.1"),
    183: ("Session Progress", "RFC 3261 §21.1.5"),
    200: ("OK", "RFC 3261 §21.2.1"),
    400: ("Bad Request", "RFC 3261 §21.4.1"),
    401: ("Unauthorized", "RFC 3261 §21.4.2"),
    403: ("Forbidden", "RFC 3261 §21.4.4"),
    404: ("Not Found", "RFC 3261 §21.4.5"),
    405: ("Method Not Allowed", "RFC 3261 §21.4.6"),
    406: ("Not Acceptable", "RFC 3261 §21.4.7"),
    415: ("Unsupported Media Type", "RFC 3261 §21.4.13"),
    416: ("Unsupported URI Scheme", "RFC 3261 §21.4.14"),
    420: ("Bad Extension", "RFC 3261 §21.4.15"),
    422: ("Session Interval Too Small", "RFC 4028 §6"),
    480: ("Temporarily Unavailable", "RFC 3261 §21.4.18"),
    481: ("Call/Transaction Does Not Exist", "RFC 3261 §21.4.19"),
    482: ("Loop Detected", "RFC 3261 §21.4.20"),
    487: ("Request Terminated", "RFC 3261 §21.4.25"),
    488: ("Not Acceptable Here", "RFC 3261 §21.4.26"),
    489: ("Bad Event", "RFC 6665 §8.3.1"),
    491: ("Request Pending", "RFC 3261 §21.4.27"),
    500: ("Server Internal Error", "RFC 3261 §21.5.1"),
    501: ("Not Implemented", "RFC 3261 §21.5.2"),
    503: ("Service Unavailable", "RFC 3261 §21.5.4"),
    505: ("Version Not Supported", "RFC 3261 §21.5.6"),
    513: ("Message Too Large", "RFC 3261 §21.5.7"),
    603: ("Decline", "RFC 3261 §21.6.2"),
}
BUILDERS = {"response_for", "_respond_new", "reject", "reject_update", "_finish_update", "Response",
            "response_for_error", "_reject"}


def statuses_in_code() -> set[int]:
    """Integer literals 100..699 passed to a response builder anywhere in telephony/."""
    found: set[int] = set()
    for path in (ROOT / "telephony").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name not in BUILDERS:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, int) and 100 <= arg.value <= 699:
                    found.add(arg.value)
    return found


def test_every_status_the_code_sends_is_in_the_table():
    sent = statuses_in_code()
    assert len(sent) >= 15, sent  # the scan finds the builders
    assert sent - set(RFC) == set()


@pytest.mark.parametrize("code", sorted(RFC))
def test_reason_phrase(code):
    phrase, _ = RFC[code]
    line = Response(code).serialize().split(b"\r\n", 1)[0].decode()
    assert line == f"SIP/2.0 {code} {phrase}"
    built = response_for(parse_message(invite()), code)
    assert built.serialize().startswith(f"SIP/2.0 {code} {phrase}\r\n".encode())


def test_an_unlisted_code_gets_its_class_phrase_never_unknown():
    assert Response(499).serialize().startswith(b"SIP/2.0 499 Bad Request\r\n")
    assert Response(599).serialize().startswith(b"SIP/2.0 599 Server Internal Error\r\n")
