"""Routes, scripts, templates and the prompt cache, with the real embedded engine."""

from __future__ import annotations

import asyncio
import textwrap

import numpy as np
import pytest

from config import ConfigError, load_prompts, load_server
from engine.prompt_cache import FRAME, PromptCache, frames_of, render_wav
from sip_tts.cli import walk
from sip_tts.script import call_values, fill, has_fields
from telephony.call import CallInfo

IVR = textwrap.dedent("""\
    voices:
      bright: {voice: en-us+f3, rate: 175}
    routes:
      - number: "2000"
        script: main
        vars: {company: Acme}
      - prefix: "3"
        caller: "555[0-9]+"
        say: "Hello {caller_digits}."
      - pattern: "4[0-9]{3}"
        headers: {X-Campaign: "^spring"}
        voice: bright
        say: "Spring."
    default:
      say: "Not in service."
    scripts:
      main:
        - say: "Welcome to {company}."
        - menu:
            prompt: "Press one for sales, two for support."
            options: {"1": sales, "2": support}
            timeout_s: 1
            retries: 1
            invalid: "Sorry."
            on_timeout: bye
      sales:
        - say: "Sales is busy."
        - goto: bye
      support:
        - collect: {prompt: "Enter your number.", into: num, max_digits: 4, terminator: "#"}
        - say: "You entered {num}."
        - goto: bye
      bye:
        - say: "Goodbye."
        - hangup
    """)


@pytest.fixture
def ivr(tmp_path):
    (tmp_path / "prompts.yaml").write_text(IVR)
    (tmp_path / "server.yaml").write_text("prompts: prompts.yaml\n")
    return load_server(tmp_path / "server.yaml"), load_prompts(tmp_path / "prompts.yaml")


def test_routes_by_number_prefix_pattern_caller_and_header(ivr):
    _, prompts = ivr
    assert prompts.lookup("2000").script == "main"
    assert prompts.lookup("3123", "5551234").say == "Hello {caller_digits}."
    assert prompts.lookup("3123", "6661234").say == "Not in service."  # caller does not match: default
    assert prompts.lookup("4123", "1", {"X-Campaign": "spring-2026"}).say == "Spring."
    assert prompts.lookup("4123", "1", {"x-campaign": "spring"}).voice == "bright"  # header names: any case
    assert prompts.lookup("4123", "1", {"X-Campaign": "autumn"}).say == "Not in service."
    assert prompts.lookup("41234", "1", {"X-Campaign": "spring"}).say == "Not in service."  # pattern is whole


def test_templates_fill_call_values():
    from config.schema import Route

    info = CallInfo("c", "3000", "5551234", "PCMU", {"X-Order": "A17"})
    values = call_values(info, Route(say="x", vars={"company": "Acme"}))
    assert fill("{caller} {caller_digits} {called} {company} {headers[x-order]} {nope}", values) == \
        "5551234 5 5 5 1 2 3 4 3000 Acme A17 "
    assert has_fields("Hi {caller}") and not has_fields("Hi there")


@pytest.mark.parametrize("digits, expected", [
    (["1"], ["Welcome to Acme.", "Press one for sales, two for support.", "Sales is busy.", "Goodbye."]),
    (["2", "4", "2", "#"], ["Welcome to Acme.", "Press one for sales, two for support.", "Enter your number.",
                            "You entered 42.", "Goodbye."]),
    (["9", "1"], ["Welcome to Acme.", "Press one for sales, two for support.", "Sorry.",
                  "Press one for sales, two for support.", "Sales is busy.", "Goodbye."]),
    ([], ["Welcome to Acme.", "Press one for sales, two for support.", "Press one for sales, two for support.",
          "Goodbye."]),  # no digit: retried once, then on_timeout
])
def test_menu_walks_with_digits(ivr, digits, expected):
    cfg, prompts = ivr
    audio, heard = asyncio.run(walk(cfg, prompts, "2000", digits, "PCMU"))
    assert heard == expected
    assert len(audio) > 8000 * len(expected) * 0.4  # each prompt is real speech
    assert np.sqrt(np.mean(audio.astype(float) ** 2)) > 300


def test_template_speaks_the_callers_number(ivr):
    cfg, prompts = ivr
    audio, heard = asyncio.run(walk(cfg, prompts, "3000", [], "PCMU", caller="5551234"))
    assert heard == ["Hello 5 5 5 1 2 3 4."]
    longer, _ = asyncio.run(walk(cfg, prompts, "3000", [], "PCMU", caller="55512345678"))
    assert len(longer) > len(audio) + 8000 * 0.8  # four more digits are spoken


def test_unknown_script_and_voice_are_errors_with_lines(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text('routes:\n  - number: "1"\n    script: nowhere\n    voice: nobody\n')
    with pytest.raises(ConfigError) as exc:
        load_prompts(p)
    text = str(exc.value)
    assert f"{p}:3: routes.0.script: unknown script 'nowhere'" in text
    assert f"{p}:4: routes.0.voice: unknown voice 'nobody'" in text


def test_warnings_for_unreachable_steps_unused_scripts_and_menus_without_timeout(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent("""\
        default: {script: a}
        scripts:
          a:
            - menu: {options: {"1": a}}
            - hangup
            - say: never
          lonely:
            - say: hi
        """))
    warnings = load_prompts(p).warnings
    assert any(":4: scripts.a.0.menu: menu without timeout_s" in w for w in warnings)
    assert any(":6: scripts.a.2: unreachable: step after hangup" in w for w in warnings)
    assert any(":7: scripts.lonely: script 'lonely' is never used" in w for w in warnings)


def test_bad_step_is_an_error_with_its_line(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text('default: {script: a}\nscripts:\n  a:\n    - say: hi\n      pause: 1\n')
    with pytest.raises(ConfigError, match=r":4: scripts\.a\.0: .*exactly one of"):
        load_prompts(p)


def test_prompt_cache_lru_budget_disk_and_counts(tmp_path):
    cache = PromptCache(max_bytes=3 * FRAME, directory=tmp_path)
    a, b = [b"a" * FRAME] * 2, [b"b" * FRAME] * 2
    cache.put("a", a)
    assert cache.get("a") == a and cache.hits == 1
    cache.put("b", b)  # over budget: the least recently used ("a") leaves memory
    assert "a" not in cache._items and cache.bytes == 2 * FRAME
    again = PromptCache(max_bytes=10 * FRAME, directory=tmp_path)  # a restart: served from disk
    assert again.get("a") == a and again.get("b") == b and again.get("c") is None
    assert (again.hits, again.misses) == (2, 1)


def test_wav_of_any_rate_becomes_8k_g711(tmp_path):
    import wave

    for rate, channels in ((8000, 1), (44100, 2), (16000, 1)):
        t = np.arange(rate) / rate
        x = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
        path = tmp_path / f"t{rate}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(channels), w.setsampwidth(2), w.setframerate(rate)
            w.writeframes(np.repeat(x, channels).tobytes())
        frames = frames_of(render_wav(path, "PCMU"), "PCMU")
        assert abs(len(frames) - 50) <= 1  # one second
        from engine.audio import decode_g711

        pcm = decode_g711(b"".join(frames), "PCMU").astype(float)
        spectrum = np.abs(np.fft.rfft(pcm[:8000]))
        assert abs(np.argmax(spectrum) - 440) <= 2
