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
from typing import Coroutine

from config.schema import MenuStep, PromptsConfig, Route, SayStep, Step, VoiceDef
from engine.base import TtsEngine, VoiceSpec
from engine.prompt_cache import PromptCache, file_key, frames_of, render_speech, render_wav, speech_key
from telephony.call import CallHandle, CallInfo
from telephony.rtp.pacer import SILENCE, FrameQueue

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
    if voice.engine is not None and voice.engine != engine:
        raise ValueError(f"voice {name!r} needs engine {voice.engine}; this server runs {engine}")
    if engine == "espeak":
        settings = dict(base.settings)
        for key in ("voice", "rate", "pitch"):
            if getattr(voice, key) is not None:
                settings[key] = getattr(voice, key)
        return VoiceSpec(name, tuple(settings.items()))
    settings = dict(base.settings) if voice.wav is None else {"voice_wav": str(prompts.resolve(voice.wav))}
    for key in ("temperature", "top_k", "top_p", "repetition_penalty", "seed"):  # chatterbox's sampling
        if getattr(voice, key, None) is not None:
            settings[key] = getattr(voice, key)
    return VoiceSpec(name, tuple(settings.items()))


@dataclass
class Speech:
    """One loaded prompts file bound to the engine and the prompt cache."""

    prompts: PromptsConfig
    engine: TtsEngine
    default_voice: VoiceSpec
    cache: PromptCache
    voices: dict[str, VoiceSpec] = field(default_factory=dict)
    barge_in: bool = False  # server.yaml media.barge_in: every prompt can be interrupted by a digit

    @classmethod
    def build(cls, prompts: PromptsConfig, engine: TtsEngine, default_voice: VoiceSpec,
              cache: PromptCache, barge_in: bool = False) -> "Speech":
        voices = {name: voice_spec(name, v, default_voice, engine.name, prompts) for name, v in prompts.voices.items()}
        return cls(prompts, engine, default_voice, cache, voices, barge_in)

    def source(self, info: CallInfo) -> "ScriptRun | None":
        route = self.prompts.lookup(info.dialed, info.caller, info.headers)
        return None if route is None else ScriptRun(self, route, info)

    def voice(self, step_voice: str | None, route_voice: str | None) -> VoiceSpec:
        name = step_voice or route_voice
        return self.voices[name] if name else self.default_voice

    def fixed_prompts(self) -> list[tuple[str, VoiceSpec]]:
        """Every (text, voice) a call can hear that does not depend on the call."""
        out: list[tuple[str, VoiceSpec]] = []

        def says(route_voice: str | None, steps: list[Step]) -> None:
            for st in steps:
                for say in (st.say, st.menu.prompt if st.menu else None, st.menu.invalid if st.menu else None,
                            st.collect.prompt if st.collect else None):
                    if say is not None and not has_fields(say.text):
                        out.append((say.text, self.voice(say.voice, route_voice)))

        routes = list(self.prompts.routes) + ([self.prompts.default] if self.prompts.default else [])
        for route in routes:
            if route.say is not None and not has_fields(route.say):
                out.append((route.say, self.voice(None, route.voice)))
            if route.steps:
                says(route.voice, route.steps)
            if route.script:
                says(route.voice, self.prompts.scripts[route.script])
        for steps in self.prompts.scripts.values():  # scripts reached through goto/menus use the default voice
            says(None, steps)
        return list({(t, v): None for t, v in out})

    async def warm(self, codecs: list[str]) -> int:
        """Render every fixed prompt into the cache (in the background at start-up and reload)."""
        done = 0
        for text, voice in self.fixed_prompts():
            for codec in codecs:
                key = speech_key(self.engine.name, voice, text, codec)
                if not self.cache.peek(key):
                    try:
                        data = await render_speech(self.engine, voice, text, codec, background=True)
                        self.cache.put(key, frames_of(data, codec))
                        done += 1
                    except Exception as exc:  # a prompt that fails to render is logged, never fatal
                        log.warning("prompt %r could not be rendered: %s", text[:40], exc)
        return done

    async def speak(self, queue: FrameQueue, text: str, voice: VoiceSpec, codec: str, cacheable: bool = True) -> None:
        """Queue ``text``: from the cache when ``cacheable`` (the step's text has no template
        fields; rendered on first use and kept), else streamed (text that depends on the call)."""
        key = speech_key(self.engine.name, voice, text, codec)
        frames = self.cache.get(key) if cacheable else None
        if frames is not None:
            queue.push_frames(frames)
            return
        data = await render_speech(self.engine, voice, text, codec, push=queue.push)
        queue.pad_frame()  # what comes next starts on a frame boundary
        if cacheable:
            self.cache.put(key, frames_of(data, codec))

    def play_frames(self, file: str, codec: str) -> list[bytes]:
        path = self.prompts.resolve(file)
        key = file_key(path, codec)
        frames = self.cache.get(key)
        if frames is None:
            frames = frames_of(render_wav(path, codec), codec)
            self.cache.put(key, frames)
        return frames


class ScriptRun:
    """One call walking its route's script."""

    handles_digits = True

    def __init__(self, speech: Speech, route: Route, info: CallInfo) -> None:
        self.speech = speech
        self.route = route
        self.info = info
        self.early_media = route.early_media
        self.values = call_values(info, route)
        self.heard: list[str] = []  # what was said, in order (logs, `sip-tts say --route`)
        self._typed: str | None = None  # a digit that interrupted a prompt, kept for the next menu

    async def run(self, call: CallHandle) -> None:
        scripts = self.speech.prompts.scripts
        steps = self.route.script_steps(scripts)
        i = 0
        jumps = 0
        while i < len(steps):
            st = steps[i]
            i += 1
            kind = st.kind
            if kind == "hangup":
                return
            if kind == "goto":
                steps, i, jumps = scripts[st.goto or ""], 0, jumps + 1
            elif kind == "say":
                assert st.say is not None
                await self._say(call, st.say)
                jumps = 0
            elif kind == "play":
                assert st.play is not None
                call.queue.pad_frame()
                call.queue.push_frames(self.speech.play_frames(st.play.file, self.info.codec))
                await self._play(call, None, st.play.barge_in)
                jumps = 0
            elif kind == "pause":
                call.queue.pad_frame()
                call.queue.push_frames([bytes([SILENCE[self.info.codec]]) * 160] * round(50 * (st.pause or 0)))
            elif kind == "menu":
                assert st.menu is not None
                target = await self._menu(call, st.menu)
                if target is None:
                    return
                steps, i, jumps = scripts[target], 0, jumps + 1
            elif kind == "collect":
                assert st.collect is not None
                c = st.collect
                if c.prompt is not None:
                    await self._say(call, c.prompt)
                await call.played()
                digits = ""
                while len(digits) < c.max_digits:
                    d = self._take(call) or await call.next_digit(c.timeout_s)
                    if d is None or (c.terminator and d == c.terminator):
                        break
                    digits += d
                self.values[c.into] = digits
                log.info("call %s: collected %s=%r", self.info.call_id, c.into, digits)
            if jumps > MAX_JUMPS:
                log.warning("call %s: script loops without audio; hanging up", self.info.call_id)
                return

    def _take(self, call: CallHandle) -> str | None:
        d, self._typed = self._typed, None
        return d or call.take_digit()

    async def _menu(self, call: CallHandle, menu: MenuStep) -> str | None:
        timeout = menu.timeout_s or 5.0
        for attempt in range(menu.retries + 1):
            if menu.prompt is not None and self._typed is None:
                await self._say(call, menu.prompt)
            d = self._take(call)
            if d is None:
                await call.played()
                d = await call.next_digit(timeout)
            if d is None:
                log.info("call %s: menu timeout (attempt %d)", self.info.call_id, attempt + 1)
                continue
            if d in menu.options:
                log.info("call %s: menu choice %s -> %s", self.info.call_id, d, menu.options[d])
                return menu.options[d]
            log.info("call %s: menu: invalid digit %s", self.info.call_id, d)
            if menu.invalid is not None:
                await self._say(call, menu.invalid)
        return menu.on_timeout

    async def _say(self, call: CallHandle, say: SayStep) -> None:
        text = fill(say.text, self.values)
        self.heard.append(text)
        voice = self.speech.voice(say.voice, self.route.voice)
        work = self.speech.speak(call.queue, text, voice, self.info.codec, cacheable=not has_fields(say.text))
        await self._play(call, work, say.barge_in or self.speech.barge_in)

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
                d = await call.barge_digit(0.02)
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
        self._typed = digit
        log.info("call %s: barge-in by %s", self.info.call_id, digit)
