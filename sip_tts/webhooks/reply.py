"""An application's answer to a webhook: the steps the call plays, validated like prompts.yaml.

The reply is ``{"steps": [...], "voice": NAME}``: the same step schema as a script in
prompts.yaml (``config/steps.py``'s union, the ``connect`` step included), validated by the same
code (``config.loader.validate`` and ``References``), so a step that would be an error in the
file is an error here. Voices and scripts (``goto``, menu options) name those of the prompts
file; ``play`` may name only WAV files below the prompts file's folder. Pure: bytes in, steps out.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

from config import ConfigError
from config.loader import validate
from config.schema import PromptsConfig
from config.steps import Play, References, Step

MAX_BYTES = 64 * 1024  # a larger reply is refused (a script is a few hundred bytes)
MAX_STEPS = 100


class ReplyError(ValueError):
    """Why a reply cannot be played (logged; never contains the reply's text)."""


class WebhookReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    voice: str | None = Field(None, description="a voice of prompts.yaml for steps that name none")


def parse_reply(body: bytes, prompts: PromptsConfig) -> WebhookReply:
    """The reply's steps, or ``ReplyError`` saying what is wrong (field and problem, not the text)."""
    if len(body) > MAX_BYTES:
        raise ReplyError(f"reply too large ({len(body)} bytes > {MAX_BYTES})")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReplyError(f"invalid JSON ({type(exc).__name__})") from None
    try:
        reply = validate(WebhookReply, data, Path("reply"), {})
    except ConfigError as exc:
        _, _, field, msg = exc.problems[0]
        more = f" (+{len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        raise ReplyError(f"invalid steps: {field or 'reply'}: {msg}{more}") from None
    refs = References(set(prompts.voices), set(prompts.scripts))
    refs.voice(("voice",), reply.voice)
    refs.steps(("steps",), reply.steps)
    for i, step in enumerate(reply.steps):
        if isinstance(step, Play):
            _check_file(prompts, step.play.file, ("steps", i, "play", "file"), refs)
    if refs.errors:
        loc, msg = refs.errors[0]
        raise ReplyError(f"invalid steps: {'.'.join(map(str, loc))}: {msg}")
    return reply


def _check_file(prompts: PromptsConfig, file: str, loc: tuple, refs: References) -> None:
    """An application may play the prompts folder's WAV files, nothing else on this host."""
    path = PurePosixPath(file)
    if path.is_absolute() or ".." in path.parts:
        refs.errors.append((loc, "only files below the prompts file's folder"))
    elif not prompts.resolve(file).is_file():
        refs.errors.append((loc, "no such file"))
