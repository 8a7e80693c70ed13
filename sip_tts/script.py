"""What a call hears: its route's script, step by step, with menus, digits and the prompt cache.

A ``Speech`` object (one per loaded prompts file) binds the engine, the named
voices and the prompt cache; ``Speech.source(info)`` routes a new call and
returns a ``ScriptRun`` — the call's audio source. A call keeps the ``Speech``
it started with, so a reload never changes a call in progress.

Text without template fields is rendered once into frames (cached); text with
fields ({caller}, {date}, ...) is synthesised per call, streaming.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Coroutine

from config.schema import PromptsConfig, Route, SayStep, Step, VoiceDef
from config.steps import END, ConnectStep, LiveStep
from engine.base import TtsEngine, VoiceSpec
from engine.registry import ENGINES
from engine.prompt_cache import PromptCache, file_key, frames_of, render_speech, render_wav, speech_key
from telephony.call import CallHandle, CallInfo
from media import FRAME_SECONDS, FRAMES_PER_SECOND, silence
from telephony.rtp.pacer import FrameQueue

if TYPE_CHECKING:
    from .live import LiveCalls, LiveSession

log = logging.getLogger(__name__)
MAX_JUMPS = 50  # gotos/menu choices in a row without any audio: a loop in the script, hang up


class _Headers(dict):
    """Header lookup for templates: case-insensitive, missing ones are empty."""

    def __getitem__(self, key: str) -> str:
        return dict.get(self, key.lower(), "")


class _Values(dict):
    def __missing__(self, key: str) -> str:
        return ""


def call_values(info: CallInfo, route: Route, now: dt.datetime | None = None) -> dict[str, object]:
    now = now or dt.datetime.now()
    return {"caller": info.caller, "called": info.dialed, "caller_digits": " ".join(info.caller),
            "date": now.strftime("%A, %B %d").replace(" 0", " "), "time": now.strftime("%H:%M"),
            "headers": _Headers({k.lower(): v for k, v in info.headers.items()}), **route.vars}


def fill(text: str, values: dict[str, object]) -> str:
    """The text with its {fields} filled; unknown fields are empty."""
    return string.Formatter().vformat(text, (), _Values(values))


def has_fields(text: str) -> bool:
    return any(name is not None for _, name, _, _ in string.Formatter().parse(text))


def voice_spec(name: str, voice: VoiceDef, base: VoiceSpec, engine: str, prompts: PromptsConfig) -> VoiceSpec:
    """A named voice of prompts.yaml as ``engine`` (its kind in ``engine/registry.py``) reads it."""
    if voice.engine is not None and voice.engine != engine:
        raise ValueError(f"voice {name!r} needs engine {voice.engine}; this server runs {engine}")
    kind = ENGINES[engine]
    fields = {key: getattr(voice, key) for key in kind.voice_fields if getattr(voice, key) is not None}
    return kind.named_voice(name, base, fields, prompts.resolve)


@dataclass
class Speech:
    """One loaded prompts file bound to the engine and the prompt cache."""

    prompts: PromptsConfig
    engine: TtsEngine
    default_voice: VoiceSpec
    cache: PromptCache
    voices: dict[str, VoiceSpec] = field(default_factory=dict)
    barge_in: bool = False  # server.yaml media.barge_in: every prompt can be interrupted by a digit
    live: "LiveCalls | None" = None  # calls handed to applications (``live`` steps); None: the HTTP API is off

    @classmethod
    def build(cls, prompts: PromptsConfig, engine: TtsEngine, default_voice: VoiceSpec,
              cache: PromptCache, barge_in: bool = False) -> "Speech":
        voices = {name: voice_spec(name, v, default_voice, engine.name, prompts) for name, v in prompts.voices.items()}
        return cls(prompts, engine, default_voice, cache, voices, barge_in)

    def source(self, info: CallInfo, webhooks=None) -> "ScriptRun | None":
        """``webhooks`` (sip_tts.webhooks.Webhooks) serves webhook routes; without it they get 404."""
        route = self.prompts.lookup(info.dialed, info.caller, info.headers)
        if route is not None and route.webhook is not None:
            return webhooks.source(self, route, info) if webhooks is not None else None
        return None if route is None else ScriptRun(self, route, info)

    def voice(self, step_voice: str | None, route_voice: str | None) -> VoiceSpec:
        name = step_voice or route_voice
        return self.voices[name] if name else self.default_voice

    def named_voice(self, name: str) -> VoiceSpec:
        """A voice by name for an application's text: prompts.yaml's, or ``default`` (KeyError: unknown)."""
        if name == "default":
            return self.default_voice
        return self.voices[name]

    def fixed_prompts(self) -> list[tuple[str, VoiceSpec]]:
        """Every (text, voice) a call can hear that does not depend on the call."""
        out: list[tuple[str, VoiceSpec]] = []

        def says(route_voice: str | None, steps: list[Step]) -> None:
            for st in steps:
                for say in st.says():
                    if not has_fields(say.text):
                        out.append((say.text, self.voice(say.voice, route_voice)))

        routes = list(self.prompts.routes) + ([self.prompts.default] if self.prompts.default else [])
        for route in routes:
            if route.say is not None and not has_fields(route.say):
                out.append((route.say, self.voice(None, route.voice)))
            if route.steps:
                says(route.voice, route.steps)
            if route.script:
                says(route.voice, self.prompts.scripts[route.script])
            if route.fallback:
                says(route.voice, route.fallback)
        for steps in self.prompts.scripts.values():  # scripts reached through goto/menus use the default voice
            says(None, steps)
        return list({(t, v): None for t, v in out})

    async def warm(self, codecs: list[str]) -> int:
        """Render every fixed prompt into the cache (in the background at start-up and reload)."""
        done = 0
        for text, voice in self.fixed_prompts():
            for codec in codecs:
                key = speech_key(self.engine.name, voice, text, codec)
                if not self.cache.peek(key) and await self.cache.fetch(key, background=True) is None:
                    try:
                        data = await render_speech(self.engine, voice, text, codec, background=True)
                        self.cache.store(key, frames_of(data, codec))
                        done += 1
                    except Exception as exc:  # a prompt that fails to render is logged, never fatal
                        log.warning("prompt %r could not be rendered: %s", text[:40], exc)
        return done

    async def speak(self, queue: FrameQueue, text: str, voice: VoiceSpec, codec: str, cacheable: bool = True) -> None:
        """Queue ``text``: from the cache when ``cacheable`` (the step's text has no template
        fields; rendered on first use and kept), else streamed (text that depends on the call)."""
        key = speech_key(self.engine.name, voice, text, codec)
        frames = await self.cache.fetch(key) if cacheable else None
        if frames is not None:
            queue.push_frames(frames)
            return
        data = await render_speech(self.engine, voice, text, codec, push=queue.push)
        queue.pad_frame()  # what comes next starts on a frame boundary
        if cacheable:
            self.cache.store(key, frames_of(data, codec))

    def play_frames(self, file: str, codec: str) -> list[bytes]:
        path = self.prompts.resolve(file)
        key = file_key(path, codec)
        frames = self.cache.get(key)
        if frames is None:
            frames = frames_of(render_wav(path, codec), codec)
            self.cache.put(key, frames)
        return frames


class ScriptRun:
    """One call walking its route's script: the steps (``config/steps.py``) run against it."""

    handles_digits = True

    def __init__(self, speech: Speech, route: Route, info: CallInfo) -> None:
        self.speech = speech
        self.route = route
        self.info = info
        self.early_media = route.early_media
        self.values = call_values(info, route)
        self.heard: list[str] = []  # what was said, in order (logs, `sip-tts say --route`)
        self.typed: str | None = None  # a digit that interrupted a prompt, kept for the next menu
        self.playing: str | None = None  # the kind of step running now, or the last one (GET /v1/calls)
        self._call: CallHandle | None = None
        self._live: "LiveSession | None" = None

    def first_steps(self) -> list[Step]:
        return self.route.script_steps(self.speech.prompts.scripts)

    def literal(self, say: SayStep) -> bool:
        """Said as written (no template fields) and never cached: an application's text (webhooks)."""
        return False

    async def run(self, call: CallHandle) -> None:
        self._call = call
        try:
            await self._run_steps()
        finally:
            if self.speech.live is not None:  # (a session it never opened may be its: see LiveCalls.close)
                self.speech.live.close(self.info.call_id, self)

    async def _run_steps(self) -> None:
        scripts = self.speech.prompts.scripts
        steps = self.first_steps()
        i = 0
        jumps = 0
        while i < len(steps):
            st = steps[i]
            i += 1
            self.playing = st.kind
            after = await st.run(self)
            if after == END:
                return
            if after is not None:
                steps, i, jumps = scripts[after], 0, jumps + 1
            elif st.audible:
                jumps = 0
            if jumps > MAX_JUMPS:
                log.warning("call %s: script loops without audio; hanging up", self.info.call_id)
                return

    # -- the ScriptContext the steps run against ------------------------------------------------
    @property
    def call(self) -> CallHandle:
        assert self._call is not None, "the script is not running"
        return self._call

    def take(self) -> str | None:
        d, self.typed = self.typed, None
        return d or self.call.take_digit()

    async def played(self) -> None:
        await self.call.played()

    async def next_digit(self, timeout: float) -> str | None:
        return await self.call.next_digit(timeout)

    def set(self, name: str, value: str) -> None:
        self.values[name] = value

    def log(self, msg: str, *args: object) -> None:
        log.info("call %s: " + msg, self.info.call_id, *args)

    async def transfer(self, target: str, timeout_s: float) -> str:
        control = self.call.control
        try:
            if control is None:
                raise KeyError(self.info.call_id)
            kind, status, reason = await control.transfer(self.info.call_id, target, timeout_s)
        except KeyError:  # (the call is gone)
            kind, status, reason = "failed", None, "no such call"
        except RuntimeError as exc:
            kind, status, reason = "failed", None, str(exc)
        self.log("transfer to %s %s%s", target, kind, f" ({status} {reason})" if status else f" ({reason})")
        return kind
    async def live(self, step: LiveStep) -> bool:
        return await self.live_session().park(step.wait_s)

    def live_session(self) -> "LiveSession":
        """The call's live session (sip_tts/live), made on first use: what an application drives."""
        registry = self.speech.live
        if registry is None:
            raise RuntimeError("live calls need the HTTP API (api.enabled: true)")
        if self._live is None:
            self._live = registry.open(self.call, self.speech.engine, self.speech.voice(None, self.route.voice),
                                       self.speech.named_voice, owner=self)
        return self._live

    def pause(self, seconds: float) -> None:
        self.call.queue.pad_frame()
        self.call.queue.push_frames([silence(self.info.codec)] * round(FRAMES_PER_SECOND * seconds))

    async def play(self, file: str, barge_in: bool) -> None:
        self.call.queue.pad_frame()
        self.call.queue.push_frames(self.speech.play_frames(file, self.info.codec))
        await self._play(self.call, None, barge_in)

    async def say(self, say: SayStep) -> None:
        literal = self.literal(say)
        text = say.text if literal else fill(say.text, self.values)
        self.heard.append(text)
        voice = self.speech.voice(say.voice, self.route.voice)
        work = self.speech.speak(self.call.queue, text, voice, self.info.codec,
                                 cacheable=not literal and not has_fields(say.text))
        await self._play(self.call, work, say.barge_in or self.speech.barge_in)

    async def connect(self, connect: ConnectStep) -> None:
        from .webhooks.connect import run_connect  # (the package imports this module)

        await run_connect(self, connect)

    async def _play(self, call: CallHandle, work: Coroutine | None, barge_in: bool) -> None:
        """Finish ``work`` (what still queues this step's audio); with barge-in a digit stops it
        and drops what is queued."""
        if not barge_in:
            if work is not None:
                await work
            return
        task = asyncio.ensure_future(work) if work is not None else None
        try:
            while task is not None and not task.done():  # still synthesising
                d = await call.barge_digit(FRAME_SECONDS)
                if d is not None:
                    self._barged(call, d)
                    return
        finally:
            if task is not None and not task.done():
                task.cancel()
        if task is not None:
            task.result()
        d = await call.wait_digit_or_played()  # queued audio playing out
        if d is not None:
            self._barged(call, d)

    def _barged(self, call: CallHandle, digit: str) -> None:
        call.queue.flush()
        self.typed = digit
        log.info("call %s: barge-in by %s", self.info.call_id, digit)
