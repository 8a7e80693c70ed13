"""Typed configuration: what server.yaml and prompts.yaml may contain.

Unknown fields are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def parse_hostport(text: str, default_port: int = 5060) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"bad port in {text!r}")
    return host or "0.0.0.0", int(port) if port else default_port


class SipSettings(_Strict):
    listen: str = Field("0.0.0.0:5060", description="HOST:PORT for SIP over UDP")
    advertised_address: str | None = Field(
        None, description="address put in Contact, Via and SDP; default: the listen host, "
                          "or this host's primary address when listening on 0.0.0.0")
    user_agent: str = "sip-tts/0.1"
    tcp: bool = Field(True, description="also listen on TCP (same address and port)")
    tcp_idle_timeout_s: float = Field(120, ge=5, description="close TCP connections idle this long (not carrying a call)")
    tcp_max_connections_per_source: int = Field(32, ge=1, description="more TCP connections from one IP are refused")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        host, _ = parse_hostport(v)
        ipaddress.ip_address(host)  # raises ValueError: must be an IP literal
        return v

    @property
    def listen_host(self) -> str:
        return parse_hostport(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_hostport(self.listen)[1]

    def advertised(self) -> str:
        if self.advertised_address:
            return self.advertised_address
        host = self.listen_host
        if host not in ("0.0.0.0", "::"):
            return host
        # The first non-loopback IPv4 address of this host's name; set
        # advertised_address explicitly on multi-homed hosts or behind NAT.
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_DGRAM)
        except OSError:
            infos = []
        for info in infos:
            addr = str(info[4][0])
            if not addr.startswith("127."):
                return addr
        return "127.0.0.1"


class RtpSettings(_Strict):
    port_min: int = Field(20000, ge=1024, le=65534)
    port_max: int = Field(20999, ge=1025, le=65535)

    @model_validator(mode="after")
    def _check_range(self) -> "RtpSettings":
        if self.port_max <= self.port_min:
            raise ValueError("port_max must be greater than port_min")
        return self


class EspeakSettings(_Strict):
    kind: Literal["espeak"] = "espeak"
    voice: str = "en-us"
    rate: int = Field(165, ge=80, le=450, description="words per minute")
    pitch: int = Field(50, ge=0, le=99)


class ChatterboxSettings(_Strict):
    kind: Literal["chatterbox"]
    model_dir: str = Field(description="local checkpoint directory (public Chatterbox Turbo layout)")
    device: str = "cuda"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    voice_wav: str | None = Field(None, description="reference WAV (>= 5 s) for the default voice; "
                                                    "none: the checkpoint's built-in voice (conds.pt)")
    voice_cache_dir: str | None = Field(None, description="where computed voice conditioning is kept")
    max_streams: int = Field(64, ge=1, le=512, description="utterances decoded together (KV-cache slots)")
    max_tokens: int = Field(750, ge=10, le=4000, description="speech tokens per utterance (25 per second)")
    temperature: float = Field(0.8, gt=0, le=2)
    top_k: int = Field(1000, ge=1)
    top_p: float = Field(0.95, gt=0, le=1)
    repetition_penalty: float = Field(1.2, ge=1, le=3)


class LimitSettings(_Strict):
    max_calls: int = Field(500, ge=1, description="concurrent calls; more get 503")
    max_message_bytes: int = Field(8192, ge=1500, le=65535, description="larger SIP messages get 513")
    max_headers: int = Field(100, ge=20, le=1000, description="more header lines get 400")
    invite_rate_per_source: float = Field(0, ge=0, description="new INVITEs per second per source IP; 0: no limit")
    invite_burst_per_source: float = Field(0, ge=0, description="burst above that rate; 0: twice the rate")


class AccessSettings(_Strict):
    allow: list[str] = Field(default_factory=list, description="source networks (CIDR) allowed to send SIP; "
                                                                 "empty: everyone. Others get 403.")

    @field_validator("allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad entry
        return v


class AuthSettings(_Strict):
    realm: str = "sip-tts"
    users: dict[str, str] = Field(min_length=1, description="username → password")
    algorithms: list[Literal["SHA-256", "MD5"]] = Field(["SHA-256", "MD5"], min_length=1,
                                                        description="offered in this order (RFC 8760)")
    nonce_ttl_s: float = Field(300, ge=10, le=86400)


class RegisterSettings(_Strict):
    registrar: str = Field(description="SIP URI REGISTER goes to, e.g. sip:pbx.example.com:5060")
    aor: str = Field(description="address of record, e.g. sip:1000@pbx.example.com")
    username: str = ""
    password: str = ""
    expires: int = Field(300, ge=30, le=86400)

    @field_validator("registrar", "aor")
    @classmethod
    def _sip_uri(cls, v: str) -> str:
        if not v.lower().startswith(("sip:", "sips:")):
            raise ValueError("must be a sip: URI")
        return v


class MediaSettings(_Strict):
    timeout_s: float = Field(0, ge=0, le=3600, description="no RTP from the caller this long: BYE (0: off)")
    dscp: int = Field(46, ge=0, le=63, description="DSCP of our RTP packets (46 = EF); 0: unmarked")
    barge_in: bool = Field(False, description="a DTMF digit stops the prompt at once")


class MetricsSettings(_Strict):
    listen: str = Field("127.0.0.1:9100", description="HOST:PORT for GET /metrics and GET /health")

    @field_validator("listen")
    @classmethod
    def _check(cls, v: str) -> str:
        host, _ = parse_hostport(v, 9100)
        ipaddress.ip_address(host)
        return v


class ServerConfig(_Strict):
    sip: SipSettings = SipSettings()
    rtp: RtpSettings = RtpSettings()
    codecs: list[Literal["PCMU", "PCMA"]] = Field(["PCMU", "PCMA"], min_length=1,
                                                 description="preference order for the answer")
    engine: EspeakSettings | ChatterboxSettings = Field(EspeakSettings(), discriminator="kind")
    prompts: str = Field("prompts.yaml", description="prompts file, relative to this file")
    limits: LimitSettings = LimitSettings()
    media: MediaSettings = MediaSettings()
    metrics: MetricsSettings | None = Field(None, description="Prometheus metrics and health endpoint; none: off")
    access: AccessSettings = AccessSettings()
    auth: AuthSettings | None = Field(None, description="digest authentication of new INVITEs; none: off")
    # YAML key "register" (an alias: the name itself would shadow ABCMeta.register)
    registration: RegisterSettings | None = Field(None, alias="register",
                                                  description="keep a contact registered at a PBX; none: off")
    drain_timeout_s: float = Field(30, ge=0, le=3600, description="on SIGTERM: how long calls in progress "
                                                                  "may finish before we hang up")
    hangup_after_prompt_ms: int = Field(300, ge=0, le=10000,
                                        description="silence after the prompt before our BYE")

    source: Path | None = Field(None, exclude=True)

    def prompts_path(self) -> Path:
        p = Path(self.prompts)
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p


class Prompt(_Strict):
    text: str = Field(min_length=1)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v


class PromptsConfig(_Strict):
    routes: dict[str, Prompt] = Field(default_factory=dict, description="dialed number → prompt")
    default: Prompt | None = Field(None, description="prompt for numbers without a route; "
                                                     "none: such calls get 404")

    @model_validator(mode="before")
    @classmethod
    def _strings_are_text(cls, data: object) -> object:
        # Allow the short form  "1000": "Hello"  as well as  "1000": {text: "Hello"}.
        if isinstance(data, dict):
            routes = data.get("routes")
            if isinstance(routes, dict):
                data = {**data, "routes": {k: ({"text": v} if isinstance(v, str) else v) for k, v in routes.items()}}
            if isinstance(data.get("default"), str):
                data = {**data, "default": {"text": data["default"]}}
        return data

    def lookup(self, dialed: str) -> Prompt | None:
        return self.routes.get(dialed, self.default)
