"""Webhook routes without sockets: the signature (checked against openssl), the reply's
validation (the prompts.yaml step schema), and the route fields' config errors."""

from __future__ import annotations

import json
import subprocess

import pytest

from config import ConfigError, load_prompts
from config.steps import Connect, Goto, Hangup, Say
from sip_tts.webhooks import sign, verify
from sip_tts.webhooks.reply import MAX_BYTES, ReplyError, parse_reply

SECRET = "s3cret-s3cret-s3cret"
PROMPTS = f"""
webhooks:
  secret: {SECRET}
voices:
  slow: {{voice: en-us, rate: 120}}
routes:
  - number: "4000"
    webhook: http://127.0.0.1:9/call
    fallback: sorry
    status_url: http://127.0.0.1:9/status
scripts:
  sorry:
    - say: "Sorry, try later."
"""


@pytest.fixture
def prompts(tmp_path):
    (tmp_path / "prompts.yaml").write_text(PROMPTS)
    (tmp_path / "chime.wav").write_bytes(b"RIFF")
    return load_prompts(tmp_path / "prompts.yaml")


def test_signature_is_hmac_sha256_of_timestamp_dot_body_as_openssl_computes_it():
    body = b'{"call_id":"abc","from":"5551234","to":"4000"}'
    header = sign(SECRET, body, 1_800_000_000.7)
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    ref = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", SECRET], input=f"{t}.".encode() + body,
                         capture_output=True, check=True).stdout.decode().split()[-1]
    assert t == "1800000000" and v1 == ref
    assert verify(SECRET, body, header, 1_800_000_100)
    assert not verify(SECRET, body + b" ", header, 1_800_000_100)  # the body as received, byte for byte
    assert not verify("another-secret-value", body, header, 1_800_000_100)
    assert not verify(SECRET, body, header, 1_800_000_000 + 301)  # replayed too late
    assert not verify(SECRET, body, "t=x,v1=00", 1_800_000_000)


def test_reply_steps_validated_like_a_script(prompts):
    reply = parse_reply(json.dumps({"voice": "slow", "steps": [
        {"say": "Hello {caller}"}, {"connect": "ws://127.0.0.1:9/agent"},
        {"connect": {"url": "wss://agent.example/x", "audio": "pcm16_8k"}}, {"goto": "sorry"}, "hangup",
        {"play": "chime.wav"}]}).encode(), prompts)
    assert [type(s) for s in reply.steps] == [Say, Connect, Connect, Goto, Hangup, type(reply.steps[-1])]
    assert reply.steps[1].connect.url == "ws://127.0.0.1:9/agent" and reply.steps[2].connect.audio == "pcm16_8k"
    assert reply.voice == "slow"


@pytest.mark.parametrize("body, why", [
    (b"<html>502 Bad Gateway</html>", "invalid JSON"),
    (b'["say", "hi"]', "invalid steps: reply: Input should be a valid dictionary"),
    (b'{"steps": []}', "invalid steps: steps: List should have at least 1 item"),
    (b'{"steps": [{"sya": "hi"}]}', "invalid steps: steps.0.sya: unknown field"),
    (b'{"steps": [{"say": "  "}]}', "invalid steps: steps.0.say.text: Value error, text is blank"),
    (b'{"steps": [{"say": "a", "hangup": true}]}', "invalid steps: steps.0: Value error, a step is exactly one"),
    (b'{"steps": [{"connect": "http://x/y"}]}', "invalid steps: steps.0.connect.url: String should match"),
    (b'{"steps": [{"goto": "nowhere"}]}', "invalid steps: steps.0.goto: unknown script 'nowhere'"),
    (b'{"steps": [{"say": {"text": "hi", "voice": "nobody"}}]}', "invalid steps: steps.0.say.voice: unknown voice"),
    (b'{"steps": [{"play": "/etc/hostname"}]}', "only files below the prompts file's folder"),
    (b'{"steps": [{"play": "../x.wav"}]}', "only files below the prompts file's folder"),
    (b'{"steps": [{"play": "absent.wav"}]}', "steps.0.play.file: no such file"),
    (b'{"steps": ["hangup"], "extra": 1}', "invalid steps: extra: unknown field"),
    (b" " * (MAX_BYTES + 1), "reply too large"),
])
def test_bad_replies_say_why_without_their_text(prompts, body, why):
    with pytest.raises(ReplyError) as exc:
        parse_reply(body, prompts)
    assert why in str(exc.value)
    assert "Bad Gateway" not in str(exc.value)  # what the application sent is not repeated (logs)


def test_route_fields_errors_name_file_line_and_field(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text('routes:\n  - number: "1"\n    webhook: http://127.0.0.1:9/x\n'
                 '  - number: "2"\n    say: hi\n    fallback: [hangup]\n'
                 '  - number: "3"\n    webhook: ftp://x\n'
                 '  - number: "4"\n    webhook: http://a/b\n    say: hi\n')
    with pytest.raises(ConfigError) as exc:
        load_prompts(p)
    text = str(exc.value)
    assert f"{p}:6: routes.1.fallback: Value error, only a webhook route has one" in text
    assert f"{p}:8: routes.2.webhook: String should match pattern" in text
    assert "routes.3: Value error, a route has exactly one of script, say, steps, webhook" in text
    p.write_text('routes:\n  - number: "1"\n    webhook: http://127.0.0.1:9/x\n    fallback: nope\n')
    with pytest.raises(ConfigError) as exc:
        load_prompts(p)
    assert f"{p}:3: routes.0.webhook: needs a secret to sign with" in str(exc.value)
    assert f"{p}:4: routes.0.fallback.0.goto: unknown script 'nope'" in str(exc.value)


def test_fallback_by_name_is_a_goto_and_its_prompts_are_cached(prompts):
    from sip_tts.script import Speech

    route = prompts.lookup("4000")
    assert route.fallback == [Goto(goto="sorry")]
    speech = Speech(prompts, engine=None, default_voice=None, cache=None)  # type: ignore[arg-type]
    assert ("Sorry, try later.", None) in speech.fixed_prompts()


def test_call_table_refuses_a_call_whose_source_will_not_play():
    """The telephony hook under a webhook route: ``media_bound(..., refuse=480)`` sends 480 (never
    a 200), reports the end, and releases the port (sans-IO: the call table under a real UA)."""
    from telephony.calls import Phase
    from tests.sipmsg import invite
    from tests.test_calls import Harness, kinds

    h = Harness()
    h.sip(invite())
    assert h.table.calls["call-1"].phase is Phase.BINDING
    h.table.media_bound("call-1", True, h.now, refuse=480)
    done = h.pump()
    assert kinds(done) == ["Ended", "BargeIn", "Release"] and done[0].reason == "refused"
    assert h.responses() == [100, 480]
    assert "call-1" not in h.table.calls and h.table.ports.in_use == 0


def test_the_applications_text_is_said_as_written_and_the_files_scripts_as_templates(prompts):
    """An application's "{caller}" is text, not a template (and never cached); a prompts.yaml
    script it jumps to keeps its templates."""
    from sip_tts.script import Speech
    from sip_tts.webhooks.source import WebhookRun
    from telephony.call import CallInfo

    async def decide():
        speech = Speech(prompts, engine=None, default_voice=None, cache=None)  # type: ignore[arg-type]
        run = WebhookRun(speech, prompts.lookup("4000"), CallInfo("c1", "4000", "5551234", "PCMU"), None)
        reply = parse_reply(b'{"steps": [{"say": "Dear {caller}"}, {"goto": "sorry"}], "voice": "slow"}', prompts)
        run.adopt(reply)
        return run, reply

    import asyncio

    run, reply = asyncio.run(decide())
    assert run.literal(reply.steps[0].say)
    assert not run.literal(prompts.scripts["sorry"][0].say)
    assert run.first_steps() == reply.steps and run.route.voice == "slow"
