"""Typed configuration: what server.yaml and prompts.yaml may contain.

Unknown fields are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from engine.chatterbox.settings import ChatterboxSettings  # noqa: F401 (importable from here, as before)
from engine.espeak import EspeakSettings  # noqa: F401 (the default engine; importable from here)
from engine.registry import ENGINES
from telephony import PRODUCT

from .steps import CollectStep, MenuStep, PlayStep, References, Say, SayStep, Step  # noqa: F401 (importable from here)
from telephony.admission import MAX_HEADERS, MAX_MESSAGE_BYTES

from .trunks import TrunkSettings


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


def _ip_listen(default_port: int = 5060):  # type: ignore[no-untyped-def]
    """A model's ``listen`` check: HOST:PORT whose HOST is an IP literal (ValueError otherwise)."""
    def check(cls, v: str) -> str:  # type: ignore[no-untyped-def]
        host, _ = parse_hostport(v, default_port)
        ipaddress.ip_address(host)
        return v
    return field_validator("listen")(classmethod(check))


class TlsConfig(_Strict):
    """SIP over TLS (RFC 3261 §26): its own listener, TLS 1.2 at least."""

    listen: str = Field("0.0.0.0:5061", description="HOST:PORT for SIP over TLS")
    cert_file: Path = Field(description="PEM certificate chain")
    key_file: Path = Field(description="PEM private key")
    ca_file: Path | None = Field(None, description="PEM CAs that client certificates must chain to")
    verify_client: bool = Field(False, description="refuse clients without a certificate signed by ca_file")

    _check_listen = _ip_listen()

    @model_validator(mode="after")
    def _ca_for_verify(self) -> "TlsConfig":
        if self.verify_client and self.ca_file is None:
            raise ValueError("verify_client needs ca_file")
        return self


class SipSettings(_Strict):
    enabled: bool = Field(True, description="false: no SIP at all, the HTTP API alone (a TTS server)")
    listen: str = Field("0.0.0.0:5060", description="HOST:PORT for SIP over UDP")
    advertised_address: str | None = Field(
        None, description="address put in Contact, Via and SDP; default: the listen host, "
                          "or this host's primary address when listening on 0.0.0.0")
    user_agent: str = Field(PRODUCT, description="our User-Agent and Server header")
    tcp: bool = Field(True, description="also listen on TCP (same address and port)")
    tcp_idle_timeout_s: float = Field(120, ge=5, description="close TCP connections idle this long (not carrying a call)")
    tcp_max_connections_per_source: int = Field(32, ge=1, description="more TCP connections from one IP are refused")
    tls: TlsConfig | None = Field(None, description="SIP over TLS listener; none: off")

    _check_listen = _ip_listen()

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


class LimitSettings(_Strict):
    max_calls: int = Field(500, ge=1, description="concurrent calls; more get 503")
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1500, le=65535, description="larger SIP messages get 513")
    max_headers: int = Field(MAX_HEADERS, ge=20, le=1000, description="more header lines get 400")
    invite_rate_per_source: float = Field(0, ge=0, description="new INVITEs per second per source IP; 0: no limit")
    invite_burst_per_source: float = Field(0, ge=0, description="burst above that rate; 0: twice the rate")
    webhooks_in_flight: int = Field(64, ge=1, le=4096, description="webhook requests at once (prompts.yaml "
                                    "webhook routes); more wait, within their route's timeout")
    status_callbacks_queued: int = Field(1000, ge=1, le=100000, description="call status callbacks waiting to be "
                                         "sent; more are dropped and counted")


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
    # Online password guessing (telephony/sip/lockout.py): per source and per username
    max_failures: int = Field(10, ge=1, le=100000, description="failed digest answers allowed per window")
    failure_window_s: float = Field(300, gt=0, le=86400, description="the sliding window of max_failures")
    lockout_s: float = Field(900, gt=0, le=604800, description="how long a guessing source is locked out")
    lockout_response: Literal["403", "silent"] = Field("403", description="what a locked-out source gets")


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
    srtp: Literal["off", "optional", "required"] = Field(
        "optional", description="SRTP with SDES keys (RFC 3711/4568): required answers 488 to a plain RTP offer")


class MetricsSettings(_Strict):
    listen: str = Field("127.0.0.1:9100", description="HOST:PORT for GET /metrics and GET /health")

    _check = _ip_listen(9100)


class CacheSettings(_Strict):
    """A fleet's shared cache (README "Fleet"): local memory and disk first, Redis second."""

    redis_url: str | None = Field(None, description="redis://[:password@]host:6379/0 (or rediss://, unix://): "
                                                    "rendered prompts and voice conditioning shared by every "
                                                    "instance; none: each instance keeps its own")
    timeout_ms: float = Field(20, ge=1, le=1000, description="one Redis command; a call never waits longer, and "
                                                             "an error or timeout stops using Redis for a while")
    ttl_days: float = Field(0, ge=0, description="entries expire after this long; 0: never (Redis's "
                                                 "maxmemory-policy evicts)")
    key_prefix: str = Field("sip-tts", pattern=r"^[A-Za-z0-9_.-]+$", description="prefix of every key")

    @field_validator("redis_url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

class ApiSettings(_Strict):
    """The HTTP API (sip_tts/api): synthesis, voices, playground, /metrics and /health."""

    enabled: bool = True
    listen: str = Field("127.0.0.1:8080", description="HOST:PORT for HTTP; a non-loopback host needs keys")
    keys: list[str] = Field(default_factory=list, description="API keys (Authorization: Bearer KEY); "
                                                              "empty: no authentication (loopback only)")
    max_concurrent: int = Field(32, ge=1, le=4096, description="synthesis requests at once; more get 429")
    max_body_bytes: int = Field(10 * 2**20, ge=4096, description="larger request bodies get 413")
    voice_dir: str | None = Field(None, description="uploaded voices (relative to this file); default: the "
                                                    "engine's voice_cache_dir, else voices/ beside this file")
    pace_with_calls: float = Field(1.0, ge=0, le=1000, description="while calls are in progress, each API stream "
                                   "is sent at most this many times real time (its first second at once); 0: no "
                                   "limit. Keeps a fast CPU engine's API work from taking the calls' CPU")
    own_thread: bool = Field(False, description="serve HTTP on its own thread and event loop instead of the "
                                                "server's loop (benchmarks/results/api_load.md)")
    max_call_streams_per_key: int = Field(100, ge=1, le=10000, description="live-call WebSockets "
                                          "(/v1/calls/{id}/stream) open at once per API key; more get 429")

    _check = _ip_listen(8080)

    @model_validator(mode="after")
    def _keys_off_loopback(self) -> "ApiSettings":
        host = parse_hostport(self.listen, 8080)[0]
        if self.enabled and not self.keys and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"keys: listening on {host} (not loopback) needs api.keys "
                             "(or listen on 127.0.0.1)")
        return self


class ServerConfig(_Strict):
    sip: SipSettings = SipSettings()
    rtp: RtpSettings = RtpSettings()
    codecs: list[Literal["PCMU", "PCMA"]] = Field(["PCMU", "PCMA"], min_length=1,
                                                 description="preference order for the answer")
    engine: Union[tuple(ENGINES.values())] = Field(EspeakSettings(), discriminator="kind")  # type: ignore[valid-type]
    prompts: str = Field("prompts.yaml", description="prompts file, relative to this file")
    limits: LimitSettings = LimitSettings()
    media: MediaSettings = MediaSettings()
    metrics: MetricsSettings | None = Field(None, description="Prometheus metrics and health endpoint on a port "
                                                              "of their own (they are also on the API's); none: off")
    api: ApiSettings = ApiSettings()
    cache: CacheSettings = CacheSettings()
    access: AccessSettings = AccessSettings()
    auth: AuthSettings | None = Field(None, description="digest authentication of new INVITEs; none: off")
    # YAML key "register" (an alias: the name itself would shadow ABCMeta.register)
    registration: RegisterSettings | None = Field(None, alias="register",
                                                  description="keep a contact registered at a PBX; none: off")
    drain_timeout_s: float = Field(30, ge=0, le=3600, description="on SIGTERM: how long calls in progress "
                                                                  "may finish before we hang up")
    hangup_after_prompt_ms: int = Field(300, ge=0, le=10000,
                                        description="silence after the prompt before our BYE")
    trunks: dict[str, TrunkSettings] = Field(default_factory=dict, description="SIP trunks for outbound calls "
                                                                                "(POST /v1/calls), by name")

    source: Path | None = Field(None, exclude=True)

    def prompts_path(self) -> Path:
        p = Path(self.prompts)
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p


# -- prompts.yaml: voices, routes, scripts ------------------------------------------------
class VoiceDef(_Strict):
    """A named voice: the engine it needs and that engine's settings."""

    engine: Literal[tuple(ENGINES)] | None = Field(None, description="default: the server's engine")  # type: ignore[valid-type]
    voice: str | None = Field(None, description="espeak: voice name (en-us, en-gb+f3, ...)")
    rate: int | None = Field(None, ge=80, le=450, description="espeak: words per minute")
    pitch: int | None = Field(None, ge=0, le=99, description="espeak: pitch")
    wav: str | None = Field(None, description="chatterbox: reference WAV (>= 5 s), relative to this file")
    # chatterbox: sampling for this voice (default: the engine's settings, stock Turbo's defaults)
    temperature: float | None = Field(None, gt=0, le=2)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, ge=1, le=3)
    seed: int | None = Field(None, ge=0, description="chatterbox: fixed sampling seed (repeatable speech)")


class Route(_Strict):
    """Which calls take this route, and what they hear."""

    number: str | None = Field(None, description="dialed number, exact")
    prefix: str | None = Field(None, description="dialed number starts with this")
    pattern: str | None = Field(None, description="regular expression the whole dialed number matches")
    caller: str | None = Field(None, description="regular expression the whole caller number matches")
    headers: dict[str, str] = Field(default_factory=dict, description="SIP header name → regular expression (search)")
    voice: str | None = None
    script: str | None = Field(None, description="a script from `scripts`")
    say: str | None = Field(None, min_length=1, description="short form: a one-step script")
    steps: list[Step] | None = Field(None, description="an inline script")
    vars: dict[str, str] = Field(default_factory=dict, description="values for templates")
    early_media: bool = Field(False, description="play the script as early media (183 Session Progress) "
                                                 "instead of answering; the call then ends with 480, unbilled")
    # Webhook routes (sip_tts/webhooks): the application says what the call plays
    webhook: str | None = Field(None, pattern=r"^https?://[^\s/]+", description="POST the call's details here "
                                "(signed) and play the steps it returns")
    webhook_secret: str | None = Field(None, min_length=16, description="HMAC-SHA256 key of the webhook's "
                                       "signature; default: webhooks.secret")
    webhook_timeout_s: float | None = Field(None, gt=0, le=10, description="the whole request, connecting "
                                            "included; default: webhooks.timeout_s")
    fallback: list[Step] | None = Field(None, description="the webhook failed: these steps (or a script's name); "
                                                          "none: 480")
    status_url: str | None = Field(None, pattern=r"^https?://[^\s/]+", description="POST call status (answered, "
                                   "completed) here, signed like the webhook")

    @field_validator("fallback", mode="before")
    @classmethod
    def _fallback_script(cls, v: object) -> object:
        return [{"goto": v}] if isinstance(v, str) else v

    @field_validator("webhook_timeout_s", "fallback")
    @classmethod
    def _webhook_only(cls, v: object, info: ValidationInfo) -> object:
        if v is not None and "webhook" in info.data and info.data["webhook"] is None:  # (absent: it failed)
            raise ValueError("only a webhook route has one")
        return v

    @field_validator("say")
    @classmethod
    def _say_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("text is blank")
        return v

    @model_validator(mode="after")
    def _check(self) -> "Route":
        import re as _re

        for name in ("pattern", "caller"):
            value = getattr(self, name)
            if value is not None:
                try:
                    _re.compile(value)
                except _re.error as exc:
                    raise ValueError(f"{name}: bad regular expression: {exc}") from None
        for name, value in self.headers.items():
            try:
                _re.compile(value)
            except _re.error as exc:
                raise ValueError(f"headers.{name}: bad regular expression: {exc}") from None
        what = [k for k in ("script", "say", "steps", "webhook") if getattr(self, k) is not None]
        if len(what) != 1:
            raise ValueError("a route has exactly one of script, say, steps, webhook")
        return self

    def script_steps(self, scripts: dict[str, list[Step]]) -> list[Step]:
        if self.steps is not None:
            return self.steps
        if self.say is not None:
            return [Say(say=SayStep(text=self.say))]
        if self.webhook is not None:  # what plays without the application (sip_tts/webhooks decides)
            return self.fallback or []
        return scripts[self.script or ""]

    def matches(self, dialed: str, caller: str, headers: dict[str, str]) -> bool:
        import re as _re

        if self.number is not None and dialed != self.number:
            return False
        if self.prefix is not None and not dialed.startswith(self.prefix):
            return False
        if self.pattern is not None and not _re.fullmatch(self.pattern, dialed):
            return False
        if self.caller is not None and not _re.fullmatch(self.caller, caller):
            return False
        lowered = {k.lower(): v for k, v in headers.items()}
        for name, rx in self.headers.items():
            value = lowered.get(name.lower())
            if value is None or _re.search(rx, value) is None:
                return False
        return True


class PromptsConfig(_Strict):
    """prompts.yaml. Routes are tried in order; the first that matches wins, else ``default``."""

    voices: dict[str, VoiceDef] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    default: Route | None = Field(None, description="calls no route matches; none: 404")
    scripts: dict[str, list[Step]] = Field(default_factory=dict)
    webhooks: "WebhookDefaults" = Field(default_factory=lambda: WebhookDefaults())
    cache: "PromptCacheSettings" = Field(default_factory=lambda: PromptCacheSettings())
    source: Path | None = Field(None, exclude=True)
    warnings: list[str] = Field(default_factory=list, exclude=True)

    @staticmethod
    def upgrade(data: object, lines: dict) -> object:
        """The first format (routes as {number: text or {text: ...}}, default as text or {text: ...})
        in today's form, with the line of each value carried over."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        routes = data.get("routes")
        if isinstance(routes, dict):
            new = []
            for i, (k, v) in enumerate(routes.items()):
                text_line = lines.get(("routes", k, "text"), lines.get(("routes", k)))
                lines[("routes", i)] = lines.get(("routes", k))
                lines[("routes", i, "say")] = text_line
                if isinstance(v, dict) and "text" in v:  # {text: ..., other fields}: text is `say`
                    v = {("say" if f == "text" else f): x for f, x in v.items()}
                if isinstance(v, dict):
                    for f in v:
                        src = ("routes", k, "text" if f == "say" else f)
                        lines[("routes", i, f)] = lines.get(src, lines.get(("routes", k)))
                new.append({"number": str(k), "say": v} if not isinstance(v, dict) else {"number": str(k), **v})
            data["routes"] = new
        default = data.get("default")
        if isinstance(default, dict) and set(default) == {"text"}:
            lines[("default", "say")] = lines.get(("default", "text"))
            default = default["text"]
        if isinstance(default, str):
            lines.setdefault(("default", "say"), lines.get(("default",)))
            data["default"] = {"say": default}
        return data

    def resolve(self, path: str) -> Path:
        """A path written in this file: relative ones are relative to the file."""
        p = Path(path)
        return self.source.parent / p if not p.is_absolute() and self.source is not None else p

    def lookup(self, dialed: str, caller: str = "", headers: dict[str, str] | None = None) -> Route | None:
        for route in self.routes:
            if route.matches(dialed, caller, headers or {}):
                return route
        return self.default

    def references(self) -> tuple[list[tuple[tuple, str]], list[tuple[tuple, str]]]:
        """(errors, warnings), each (location, message): unknown scripts and voices, unreachable scripts, menus
        without a timeout."""
        refs = References(set(self.voices), set(self.scripts))
        for i, route in enumerate(self.routes):
            refs.voice(("routes", i, "voice"), route.voice)
            refs.target(("routes", i, "script"), route.script)
            if route.steps:
                refs.steps(("routes", i, "steps"), route.steps)
        if self.default is not None:
            refs.voice(("default", "voice"), self.default.voice)
            refs.target(("default", "script"), self.default.script)
            if self.default.steps:
                refs.steps(("default", "steps"), self.default.steps)
        for loc, route in [(("routes", i), r) for i, r in enumerate(self.routes)] + \
                ([(("default",), self.default)] if self.default is not None else []):
            for name in ("webhook", "status_url"):  # what we send an application is signed
                if getattr(route, name) is not None and not (route.webhook_secret or self.webhooks.secret):
                    refs.errors.append((loc + (name,), "needs a secret to sign with: webhooks.secret "
                                                       "(or the route's webhook_secret)"))
            if route.fallback:
                refs.steps(loc + ("fallback",), route.fallback)
        for name, items in self.scripts.items():
            refs.steps(("scripts", name), items)
        for name in self.scripts:
            if name not in refs.reached:
                refs.warnings.append((("scripts", name),
                                      f"script {name!r} is never used (no route, goto or menu leads to it)"))
        return refs.errors, refs.warnings


class PromptCacheSettings(_Strict):
    """Rendered prompts, ready-to-send G.711 frames, for steps whose text does not depend on the call."""

    max_mb: float = Field(64, ge=0, description="memory budget; least recently used prompts go first")
    dir: str | None = Field(None, description="keep rendered prompts here across restarts (relative to this file)")
    warm: bool = Field(True, description="render every fixed prompt at start-up and reload, in the background")


class WebhookDefaults(_Strict):
    """What webhook routes use unless they say otherwise (README, "Webhook routes")."""

    secret: str | None = Field(None, min_length=16, description="HMAC-SHA256 key signing requests and status "
                                                                "callbacks (a route's webhook_secret wins)")
    timeout_s: float = Field(2.0, gt=0, le=10, description="a webhook's whole request; the caller hears nothing "
                                                           "until it answers (or the fallback)")


PromptsConfig.model_rebuild()
