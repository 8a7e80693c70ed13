"""Strict checks of the RFC 3261 §25 grammar for the header values a UAS relies on.

The parser in ``message.py`` frames a message and splits its headers; these
functions decide whether the values are well formed, so malformed requests
(RFC 4475 §3.1.2: stray separators, unbalanced quotes, spaces inside ``<>``,
unenclosed URIs with headers, non-GMT dates) get 400 instead of being guessed
at. Each raises ``ValueError`` naming what is wrong; nothing here touches I/O.
"""

from __future__ import annotations

import re

TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = re.compile(rf"[{TOKEN_CHARS}]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:")
_SWS = " \t"
# gen-value = token / host / quoted-string; a host may be an IPv6 reference
_GEN_VALUE = re.compile(rf"[{TOKEN_CHARS}:\[\]]+")
_VIA_PROTOCOL = re.compile(rf"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([{TOKEN_CHARS}]+)[ \t]+(.*)$",
                           re.IGNORECASE | re.DOTALL)
_SENT_BY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:[ \t]*:[ \t]*\d{1,5})?")
_DATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                   r"\d{4} \d{2}:\d{2}:\d{2} GMT")


def quoted_end(text: str, start: int) -> int:
    """Index just past the quoted-string that opens at ``text[start]`` (``"``); ValueError if unterminated."""
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text) or text[i + 1] in "\r\n":
                break
            i += 2
            continue
        if ch == '"':
            return i + 1
        if ch in "\r\n":
            break
        i += 1
    raise ValueError("unterminated quoted string")


def _skip_sws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SWS:
        i += 1
    return i


def check_params(text: str) -> None:
    """``*( SEMI generic-param )`` with SWS around the separators; an empty parameter is an error."""
    i = _skip_sws(text, 0)
    while i < len(text):
        if text[i] != ";":
            raise ValueError(f"expected ';' in parameters {text[:40]!r}")
        i = _skip_sws(text, i + 1)
        m = TOKEN.match(text, i)
        if m is None:
            raise ValueError(f"empty or malformed parameter in {text[:40]!r}")
        i = _skip_sws(text, m.end())
        if i < len(text) and text[i] == "=":
            i = _skip_sws(text, i + 1)
            if i < len(text) and text[i] == '"':
                i = quoted_end(text, i)
            else:
                v = _GEN_VALUE.match(text, i)
                if v is None:
                    raise ValueError(f"parameter without a value in {text[:40]!r}")
                i = v.end()
            i = _skip_sws(text, i)


def check_uri(uri: str, in_brackets: bool) -> None:
    """An absoluteURI / SIP-URI: a scheme, no whitespace or delimiters; outside ``<>`` no ``?`` or ``,``."""
    if not uri or _SCHEME.match(uri) is None:
        raise ValueError(f"not a URI: {uri[:40]!r}")
    if any(c in uri for c in ' \t\r\n<>"'):
        raise ValueError(f"whitespace or delimiter inside URI {uri[:40]!r}")
    if not in_brackets and ("?" in uri or "," in uri):
        # RFC 3261 §20: a URI with a comma, question mark or semicolon must be enclosed in <>
        raise ValueError(f"URI with headers must be enclosed in <>: {uri[:40]!r}")


def check_name_addr(value: str, star_ok: bool = False) -> None:
    """``name-addr / addr-spec`` followed by header parameters (From, To, Contact, Route, ...)."""
    text = value.strip(_SWS)
    if star_ok and text == "*":
        return
    i = 0
    if text.startswith('"'):
        i = _skip_sws(text, quoted_end(text, 0))
        if i >= len(text) or text[i] != "<":
            raise ValueError("quoted display name not followed by <URI>")
    else:
        lt = text.find("<")
        if lt >= 0:
            display = text[:lt]
            if any(TOKEN.fullmatch(word) is None for word in display.split()):
                raise ValueError(f"display name is neither a quoted string nor tokens: {display[:40]!r}")
            i = lt
    if i < len(text) and text[i] == "<":
        gt = text.find(">", i)
        if gt < 0:
            raise ValueError("unterminated <URI>")
        check_uri(text[i + 1:gt], in_brackets=True)  # no LWS inside the brackets (RFC 4475 §3.1.2.14)
        check_params(text[gt + 1:])
        return
    uri, sep, params = text.partition(";")
    check_uri(uri.rstrip(_SWS), in_brackets=False)
    if sep:
        check_params(";" + params)


def check_via(value: str) -> None:
    """``SIP / 2.0 / transport SP sent-by *( SEMI via-params )``, with the LWS the grammar allows."""
    m = _VIA_PROTOCOL.match(value.strip(_SWS))
    if m is None:
        raise ValueError(f"bad Via {value[:40]!r}")
    sent_by, sep, params = m.group(2).partition(";")
    if _SENT_BY.fullmatch(sent_by.strip(_SWS)) is None:
        raise ValueError(f"bad Via sent-by {sent_by[:40]!r}")
    if sep:
        check_params(";" + params)


def check_date(value: str) -> None:
    """SIP-date is RFC 1123 in GMT only (RFC 3261 §20.17)."""
    if _DATE.fullmatch(value.strip()) is None:
        raise ValueError(f"bad Date {value[:40]!r}")
