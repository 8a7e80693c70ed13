"""``trunks:`` in server.yaml: the SIP trunks outbound calls go through (POST /v1/calls).

Each trunk is named (the API's ``trunk`` field) and says where INVITEs go, how (UDP or TCP),
with which digest credentials, through which outbound proxy, how many calls it takes (calls per
second and at once: over either, the API answers 429 and no INVITE is sent) and how a number
becomes the user part of the Request-URI (``number_format``).
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NUMBER_FIELDS = {"number", "digits"}


class TrunkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="HOST[:PORT] INVITEs go to (port 5060 if none)")
    transport: Literal["UDP", "TCP"] = "UDP"
    domain: str | None = Field(None, description="host part of Request-URIs and From; default: the address's host")
    username: str = Field("", description="digest credentials for 401/407 challenges")
    password: str = ""
    outbound_proxy: str | None = Field(None, description="SIP URI every request goes through first (a Route)")
    calls_per_second: float = Field(0, ge=0, le=10000, description="new calls per second; more get 429 (0: no limit)")
    max_concurrent: int = Field(0, ge=0, description="calls at once on this trunk; more get 429 (0: no limit)")
    number_format: str = Field("{number}", description="Request-URI user for a number: {number} as given "
                                                       "(+ kept), {digits} without the +; e.g. '00{digits}'")
    caller_id: str | None = Field(None, description="From user when the request gives no 'from'")
    ring_timeout_s: float = Field(30, gt=0, le=600, description="no answer by then: CANCEL (the API may say less)")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        from .schema import parse_hostport

        host, _ = parse_hostport(v)
        if host in ("0.0.0.0", "::") or not host:
            raise ValueError(f"needs a host, got {v!r}")
        return v

    @field_validator("outbound_proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        from telephony.sip.uri import SipUri

        if v is not None:
            SipUri.parse(v)  # ValueError names what is wrong
        return v

    @field_validator("number_format")
    @classmethod
    def _format(cls, v: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
        except ValueError as exc:
            raise ValueError(f"not a format string: {exc}") from None
        if not names or names - NUMBER_FIELDS:
            raise ValueError("must use {number} or {digits}, and no other field")
        return v

    def user_for(self, number: str) -> str:
        return self.number_format.format(number=number, digits=number.lstrip("+"))
