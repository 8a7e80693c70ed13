"""Script steps: one class per step type, each owning its validation, what it references,
the prompts it can speak and how it runs.

A step is written in prompts.yaml as a mapping with one key naming its type (``say: ...``,
``menu: {...}``) or as the word ``hangup``; ``Step`` is the union of the classes, told apart by
that key. A step runs against a ``ScriptContext`` (``sip_tts/script.py``'s ``ScriptRun``), which
says, plays and reads digits for one call. Adding a step type: a class here and a line in ``STEPS``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Iterator, Literal, Protocol, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator

END = "\0end"  # what a step's run returns to end the script (hang up); a script name jumps there


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- what steps say ---------------------------------------------------------------------------
class SayStep(_Strict):
    text: str = Field(min_length=1, description="what to say; {caller}, {called}, {date}, {time}, "
                                                "{headers[Name]}, route vars and collected digits fill in")
    voice: str | None = None
    barge_in: bool = Field(False, description="a digit stops this prompt (the digit is kept for the next menu)")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v


class PlayStep(_Strict):
    file: str = Field(description="WAV file (any rate, mono or stereo), relative to this file")
    barge_in: bool = False


class MenuStep(_Strict):
    prompt: SayStep | None = None
    options: dict[str, str] = Field(min_length=1, description="digit → script to go to")
    timeout_s: float | None = Field(None, gt=0, le=60, description="wait for a digit after the prompt (default 5)")
    retries: int = Field(2, ge=0, le=10, description="prompt again this often on timeout or a wrong digit")
    invalid: SayStep | None = Field(None, description="said after a wrong digit")
    on_timeout: str | None = Field(None, description="script after the last retry; none: hang up")

    @field_validator("options")
    @classmethod
    def _digits(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if len(k) != 1 or k not in "0123456789*#ABCD":
                raise ValueError(f"option {k!r} is not one DTMF digit (0-9 * # A-D)")
        return v


class ConnectStep(_Strict):
    url: str = Field(pattern=r"^wss?://[^\s/]+", description="the application's WebSocket (ws:// or wss://)")
    audio: Literal["pcm16_8k", "pcm16_16k", "mulaw"] | None = Field(
        None, description="also send the caller's audio to the application as binary frames, in this format")


class CollectStep(_Strict):
    prompt: SayStep | None = None
    into: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="variable the digits go into")
    max_digits: int = Field(16, ge=1, le=64)
    terminator: str = Field("#", pattern=r"^[0-9*#]?$", description="ends input early (not kept)")
    timeout_s: float = Field(5.0, gt=0, le=60, description="after the prompt and between digits")


class LiveStep(_Strict):
    wait_s: float = Field(30.0, gt=0, le=3600, description="how long the answered call waits for an application "
                                                           "to take it (WebSocket /v1/calls/{id}/stream or a "
                                                           "say/play/hangup request)")
    on_timeout: str | None = Field(None, description="script when no application came; none: the next step")


# -- what a step runs against and reports to --------------------------------------------------
class TransferStep(_Strict):
    target: str = Field(min_length=1, description="SIP URI the caller is referred to (blind transfer, REFER)")
    timeout_s: float = Field(30, gt=0, le=300, description="no final outcome by then: the transfer failed")

    @field_validator("target")
    @classmethod
    def _uri(cls, v: str) -> str:
        from telephony.sip.uri import SipUri

        SipUri.parse(v)  # ValueError says what is wrong
        return v


class ScriptContext(Protocol):
    """One call walking a script: what a step may do."""

    typed: str | None  # a digit that interrupted a prompt, kept for the next menu

    async def say(self, say: SayStep) -> None: ...

    async def play(self, file: str, barge_in: bool) -> None: ...

    def pause(self, seconds: float) -> None: ...

    def take(self) -> str | None:
        """A digit already pressed (typed ahead), without waiting."""

    async def played(self) -> None:
        """Until the queued audio has been sent."""

    async def next_digit(self, timeout: float) -> str | None: ...

    def set(self, name: str, value: str) -> None:
        """A template value for the rest of the call."""

    def log(self, msg: str, *args: object) -> None: ...

    async def transfer(self, target: str, timeout_s: float) -> str:
        """Blind-transfer the call; ``succeeded`` (the call is over) or ``failed`` (it goes on)."""
        ...
    async def connect(self, connect: ConnectStep) -> None:
        """Hand the call to an application over a WebSocket until it closes (sip_tts/webhooks/connect.py)."""

    async def live(self, step: LiveStep) -> bool:
        """Hand the call to an application (sip_tts/live); False: none came within ``wait_s``."""


class References:
    """What a prompts file's steps refer to: unknown voices and scripts are errors; scripts
    reached, and questionable steps (warnings), are collected."""

    def __init__(self, voices: set[str], scripts: set[str]) -> None:
        self.voices, self.scripts = voices, scripts
        self.errors: list[tuple[tuple, str]] = []
        self.warnings: list[tuple[tuple, str]] = []
        self.reached: set[str] = set()

    def voice(self, loc: tuple, name: str | None) -> None:
        if name is not None and name not in self.voices:
            self.errors.append((loc, f"unknown voice {name!r}"))

    def target(self, loc: tuple, name: str | None) -> None:
        if name is None:
            return
        if name not in self.scripts:
            self.errors.append((loc, f"unknown script {name!r}"))
        else:
            self.reached.add(name)

    def steps(self, loc: tuple, items: list["Step"]) -> None:
        for i, step in enumerate(items):
            step.check(loc + (i,), self)
            if step.final and i + 1 < len(items):
                self.warnings.append((loc + (i + 1,), f"unreachable: step after {step.kind}"))


# -- the step types ---------------------------------------------------------------------------
class _Step(_Strict):
    kind: ClassVar[str]
    audible: ClassVar[bool] = False  # makes audio (a loop of steps without any is cut short)
    final: ClassVar[bool] = False  # nothing after it in the same script runs

    def check(self, loc: tuple, refs: References) -> None:
        """Report what this step refers to (``loc``: its place in the file)."""

    def says(self) -> Iterator[SayStep]:
        """The prompts this step can speak (those without template fields are cached)."""
        return iter(())

    async def run(self, ctx: ScriptContext) -> str | None:
        """None: go on with the next step; ``END``: the script is over; a script name: go there."""
        raise NotImplementedError


class Say(_Step):
    kind: ClassVar[str] = "say"
    audible: ClassVar[bool] = True
    say: SayStep

    def check(self, loc: tuple, refs: References) -> None:
        refs.voice(loc + ("say", "voice"), self.say.voice)

    def says(self) -> Iterator[SayStep]:
        yield self.say

    async def run(self, ctx: ScriptContext) -> str | None:
        await ctx.say(self.say)
        return None


class Play(_Step):
    kind: ClassVar[str] = "play"
    audible: ClassVar[bool] = True
    play: PlayStep

    async def run(self, ctx: ScriptContext) -> str | None:
        await ctx.play(self.play.file, self.play.barge_in)
        return None


class Pause(_Step):
    kind: ClassVar[str] = "pause"
    pause: float = Field(gt=0, le=60, description="seconds of silence")

    async def run(self, ctx: ScriptContext) -> str | None:
        ctx.pause(self.pause)
        return None


class Menu(_Step):
    kind: ClassVar[str] = "menu"
    menu: MenuStep

    def check(self, loc: tuple, refs: References) -> None:
        menu = self.menu
        for digit, name in menu.options.items():
            refs.target(loc + ("menu", "options", digit), name)
        refs.target(loc + ("menu", "on_timeout"), menu.on_timeout)
        if menu.timeout_s is None:
            refs.warnings.append((loc + ("menu",), "menu without timeout_s: waits 5 s for a digit"))
        for sub in (menu.prompt, menu.invalid):
            if sub is not None:
                refs.voice(loc + ("menu",), sub.voice)

    def says(self) -> Iterator[SayStep]:
        yield from (s for s in (self.menu.prompt, self.menu.invalid) if s is not None)

    async def run(self, ctx: ScriptContext) -> str | None:
        menu = self.menu
        timeout = menu.timeout_s or 5.0
        for attempt in range(menu.retries + 1):
            if menu.prompt is not None and ctx.typed is None:
                await ctx.say(menu.prompt)
            d = ctx.take()
            if d is None:
                await ctx.played()
                d = await ctx.next_digit(timeout)
            if d is None:
                ctx.log("menu timeout (attempt %d)", attempt + 1)
                continue
            if d in menu.options:
                ctx.log("menu choice %s -> %s", d, menu.options[d])
                return menu.options[d]
            ctx.log("menu: invalid digit %s", d)
            if menu.invalid is not None:
                await ctx.say(menu.invalid)
        return menu.on_timeout or END


class Collect(_Step):
    kind: ClassVar[str] = "collect"
    collect: CollectStep

    def check(self, loc: tuple, refs: References) -> None:
        if self.collect.prompt is not None:
            refs.voice(loc + ("collect", "prompt", "voice"), self.collect.prompt.voice)

    def says(self) -> Iterator[SayStep]:
        if self.collect.prompt is not None:
            yield self.collect.prompt

    async def run(self, ctx: ScriptContext) -> str | None:
        c = self.collect
        if c.prompt is not None:
            await ctx.say(c.prompt)
        await ctx.played()
        digits = ""
        while len(digits) < c.max_digits:
            d = ctx.take() or await ctx.next_digit(c.timeout_s)
            if d is None or (c.terminator and d == c.terminator):
                break
            digits += d
        ctx.set(c.into, digits)
        ctx.log("collected %s=%r", c.into, digits)
        return None


class Goto(_Step):
    goto: str
    kind: ClassVar[str] = "goto"
    final: ClassVar[bool] = True

    def check(self, loc: tuple, refs: References) -> None:
        refs.target(loc + ("goto",), self.goto)

    async def run(self, ctx: ScriptContext) -> str | None:
        return self.goto


class Hangup(_Step):
    kind: ClassVar[str] = "hangup"
    final: ClassVar[bool] = True
    hangup: bool = True

    async def run(self, ctx: ScriptContext) -> str | None:
        return END


class Transfer(_Step):
    """Hand the call to ``target`` once what was said has played; on failure the script goes on."""

    kind: ClassVar[str] = "transfer"
    transfer: TransferStep

    async def run(self, ctx: ScriptContext) -> str | None:
        await ctx.played()
        return END if await ctx.transfer(self.transfer.target, self.transfer.timeout_s) == "succeeded" else None
class Connect(_Step):
    """The call driven live by an application: the server opens the WebSocket to it and runs the
    per-call stream protocol over it (text in, events and caller audio out) until it closes."""

    kind: ClassVar[str] = "connect"
    audible: ClassVar[bool] = True
    connect: ConnectStep

    @field_validator("connect", mode="before")
    @classmethod
    def _short(cls, v: object) -> object:
        return {"url": v} if isinstance(v, str) else v

    async def run(self, ctx: ScriptContext) -> str | None:
        await ctx.connect(self.connect)
        return None


class Live(_Step):
    """The call waits for an application, which then drives it (text in, events and audio out) until
    its WebSocket closes; then the script goes on (after the last step: hang up)."""

    kind: ClassVar[str] = "live"
    audible: ClassVar[bool] = True
    live: LiveStep

    def check(self, loc: tuple, refs: References) -> None:
        refs.target(loc + ("live", "on_timeout"), self.live.on_timeout)

    async def run(self, ctx: ScriptContext) -> str | None:
        took = await ctx.live(self.live)
        return None if took else self.live.on_timeout


class _Unknown(_Strict):
    """A mapping naming no step type: validation reports its keys as unknown fields."""


STEPS: dict[str, type[_Step]] = {cls.kind: cls for cls in (Say, Play, Pause, Menu, Collect, Goto, Hangup, Live,
                                                                 Connect, Transfer)}
UNKNOWN = "unknown-step"  # the union's tag for _Unknown (never shown: the loader drops union tags)


def _short_forms(data: object) -> object:
    """``hangup`` alone, ``say: TEXT``, ``play: FILE``, prompts and ``invalid`` as plain text; and
    exactly one step type per step."""
    if data == "hangup":
        return {"hangup": True}
    if data == "live":
        return {"live": {}}
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if isinstance(data.get("say"), str):
        data["say"] = {"text": data["say"]}
    if isinstance(data.get("play"), str):
        data["play"] = {"file": data["play"]}
    if isinstance(data.get("transfer"), str):
        data["transfer"] = {"target": data["transfer"]}
    if data.get("live") is True or isinstance(data.get("live"), (int, float)) and not isinstance(data["live"], bool):
        data["live"] = {} if data["live"] is True else {"wait_s": data["live"]}
    for key in ("menu", "collect"):
        if isinstance(data.get(key), dict) and isinstance(data[key].get("prompt"), str):
            data[key] = {**data[key], "prompt": {"text": data[key]["prompt"], "barge_in": True}}
    if isinstance(data.get("menu"), dict) and isinstance(data["menu"].get("invalid"), str):
        data["menu"] = {**data["menu"], "invalid": {"text": data["menu"]["invalid"]}}
    kinds = [k for k in STEPS if k in data and data[k] is not None]
    if len(kinds) != 1 and (kinds or not set(data) - set(STEPS)):
        raise ValueError(f"a step is exactly one of {', '.join(STEPS)}"
                         + (f" (got {', '.join(kinds)})" if kinds else ""))
    return data


def _tag(data: object) -> str:
    if isinstance(data, dict):
        return next((k for k in STEPS if data.get(k) is not None), UNKNOWN)
    if isinstance(data, BaseModel):
        return getattr(data, "kind", UNKNOWN)
    return UNKNOWN


Step = Annotated[
    Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in STEPS.items()) + (Annotated[_Unknown, Tag(UNKNOWN)],)],
    Discriminator(_tag), BeforeValidator(_short_forms)]


def untagged(loc: tuple) -> tuple:
    """A validation error's location without the union's tag after a step's index, so it reads
    as the file does: ``scripts.a.0.say.text``, not ``scripts.a.0.say.say.text``."""
    out = list(loc)
    for k in range(len(loc) - 1, 1, -1):
        if (loc[k] in STEPS or loc[k] == UNKNOWN) and isinstance(loc[k - 1], int) and \
                (loc[k - 2] in ("steps", "fallback") or (k == 3 and loc[0] == "scripts")):
            del out[k]
    return tuple(out)
