"""The engine proving itself: verify-engine, start-up fall-backs, watermark, long and odd text,
the stop token, per-request sampling and seeds. CPU, the small random test checkpoint (a
4-layer T3; S3Gen at full size), written once for the module; doctored copies break one thing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.base import EngineError, VoiceSpec  # noqa: E402
from engine.chatterbox.checkpoint import load_checkpoint  # noqa: E402
from engine.chatterbox.engine import LEAD_ZEROS, ChatterboxEngine, ChatterboxOptions  # noqa: E402
from engine.chatterbox.s3gen_streamer import SAMPLES_PER_FRAME  # noqa: E402

TOKEN_SAMPLES = 2 * SAMPLES_PER_FRAME  # 40 ms of audio per speech token


@pytest.fixture(scope="module")
def ckpt_dir(random_checkpoint):
    return random_checkpoint(4, 256, 3)


@pytest.fixture(scope="module")
def t3_ties_dir(ckpt_dir, tmp_path_factory):
    """T3's speech logits offset by 1e4: exact in float32, all ties in bfloat16 (random_checkpoint)."""
    from engine.chatterbox.random_checkpoint import doctor_t3_ties

    return doctor_t3_ties(ckpt_dir, tmp_path_factory.mktemp("ties") / "ckpt")


def options(model_dir, **kw):
    base = dict(device="cpu", dtype="float32", max_streams=4, max_len=512, max_tokens=20, watermark=False,
                startup_checks=False)
    base.update(kw)
    return ChatterboxOptions(str(model_dir), **base)


def speak(opts, texts, voice=VoiceSpec(), timeout=300):
    """Start an engine, stream each text whole (an EngineError is returned in its place)."""
    async def main():
        engine = ChatterboxEngine(opts)
        await engine.start()
        out = []
        try:
            for text in texts:
                try:
                    out.append(await asyncio.wait_for(_collect(engine.stream(text, voice)), timeout))
                except EngineError as exc:
                    out.append(exc)
        finally:
            sched = engine._scheduler
            engine.seen = dict(stats=engine.stats, t3=sched.runner.dtype, flow=sched.streamer.flow_dtype,
                               vocoder=sched.streamer.hift_dtype)
            await engine.close()
        return engine, out

    return asyncio.run(main())


async def _collect(stream):
    return [c async for c in stream]


# -- verify-engine ----------------------------------------------------------------------
def test_verify_engine_passes_on_the_test_checkpoint_and_names_the_failing_path_on_a_doctored_one(
        ckpt_dir, t3_ties_dir, tmp_path, capsys):
    """The command itself (in-process): the fast paths on the CPU (bfloat16 T3 and flow, block-causal
    reference, streaming; float16 HiFT is too slow on a CPU: the GPU script checks it, with a
    doctored vocoder too) within their thresholds on the test checkpoint; on a doctored checkpoint
    (T3 in bfloat16 all ties) exit 1, T3's dtype named with the setting that turns it off."""
    from sip_tts.cli import main

    common = ["--device", "cpu", "--dtype", "bfloat16", "--vocoder-dtype", "float32", "--sentences", "1",
              "--max-tokens", "12"]
    rc = main(["verify-engine", "--model-dir", str(ckpt_dir), *common, "--json", str(tmp_path / "ok.json"),
               "--md", str(tmp_path / "ok.md")])
    out = capsys.readouterr()
    report = json.loads((tmp_path / "ok.json").read_text())
    with capsys.disabled():
        print("\n" + (tmp_path / "ok.md").read_text())
    assert rc == 0, out.err
    assert report["passed"] and not report["failed_paths"]
    names = {c["name"]: c for c in report["checks"]}
    for name in ("t3.exact.logits_rel_error", "t3.dtype.greedy_agreement", "flow.exact.mel_snr_db",
                 "flow.dtype.mel_snr_db", "flow.reference_attention.mel_snr_db",
                 "stream.audio_snr_db", "stream.lsd_db", "stream.join_step_ratio"):
        assert names[name]["passed"] and not names[name]["skipped"] and names[name]["figure"] is not None, name
    assert names["flow.graphs.mel_snr_db"]["skipped"] == "no GPU"
    assert names["t3.exact.logits_rel_error"]["figure"] < 1e-4  # ours in float32 == stock
    assert "| flow.dtype.mel_snr_db |" in out.out

    rc = main(["verify-engine", "--model-dir", str(t3_ties_dir), *common, "--only", "t3", "--json",
               str(tmp_path / "bad.json")])
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "bad.json").read_text())
    assert rc == 1
    assert report["failed_paths"] == ["t3.dtype"]  # T3 in float32 still equals stock
    assert {c["name"]: c for c in report["checks"]}["flow.dtype.mel_snr_db"]["skipped"] == "not asked for (--only)"
    assert "FAILED t3.dtype.greedy_agreement" in err and "turn it off with dtype" in err


def test_verify_engine_refuses_a_config_without_chatterbox(tmp_path, capsys):
    from sip_tts.cli import main

    (tmp_path / "server.yaml").write_text("engine: {kind: espeak}\n")
    (tmp_path / "prompts.yaml").write_text("default: {text: hi}\n")
    assert main(["verify-engine", "--config", str(tmp_path / "server.yaml")]) == 2
    assert "engine.kind is not chatterbox" in capsys.readouterr().err


def test_startup_checks_fall_back_to_the_exact_path_with_a_warning_and_a_metric(t3_ties_dir, caplog):
    """T3 in bfloat16 fails its start-up check on the doctored checkpoint: T3 runs in float32 (the
    flow stays in bfloat16, its check passed), a warning names the path and the figure, the stats
    carry it (the metric), and the engine speaks."""
    caplog.set_level(logging.INFO, logger="engine.chatterbox.engine")
    engine, (chunks,) = speak(options(t3_ties_dir, dtype="bfloat16", startup_checks=True, max_tokens=12), ["Hello."])
    assert set(engine.fallbacks) == {"t3.dtype"} and engine.fallbacks["t3.dtype"] < 0.5
    figures = {c.name: c for c in engine.checks}
    assert figures["flow.dtype.mel_snr_db"].passed and figures["flow.reference_attention.mel_snr_db"].passed
    assert (engine.seen["t3"], engine.seen["flow"]) == (torch.float32, torch.bfloat16)
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("t3.dtype" in w and "dtype=float32" in w for w in warning), warning
    assert engine.startup_seconds > engine.checks_seconds > 0
    assert ("t3.dtype", engine.fallbacks["t3.dtype"], False) in engine.seen["stats"].checks
    assert ("flow.dtype", figures["flow.dtype.mel_snr_db"].figure, True) in engine.seen["stats"].checks
    audio = np.concatenate(chunks)
    assert audio.size == (12 + 3) * TOKEN_SAMPLES - LEAD_ZEROS and np.isfinite(audio).all()

    from engine.base import EngineStats
    from sip_tts.metrics import Metrics

    stats = EngineStats(checks=(("vocoder.dtype", float("-inf"), False), ("flow.dtype", 31.5, True)))
    text = Metrics(lambda: 0, engine_stats=lambda: stats).render().decode()
    assert 'sip_tts_engine_fallback{path="vocoder.dtype"} 1.0' in text
    assert 'sip_tts_engine_fallback{path="flow.dtype"} 0.0' in text
    assert 'sip_tts_engine_check_figure{path="flow.dtype"} 31.5' in text


# -- watermark ------------------------------------------------------------------------
def test_watermark_loads_without_pkg_resources_and_is_detected_on_streamed_output(ckpt_dir):
    """Perth really loads (our venv's setuptools has no pkg_resources) and its own detector finds
    the mark on the engine's streamed chunks joined; the same text unmarked reads as unmarked."""
    from engine.watermark import Watermarker

    opts = options(ckpt_dir, max_tokens=60, seed=5)
    _, (plain,) = speak(opts, ["Thank you for calling."])
    opts.watermark = True
    engine, (marked,) = speak(opts, ["Thank you for calling."])
    assert len(marked) >= 3  # streamed: the windows are marked one by one
    wm = Watermarker(24000)
    a, b = np.concatenate(plain), np.concatenate(marked)
    assert a.size == b.size
    assert wm.detect(b) > 0.9 and wm.detect(a) < 0.5, (wm.detect(b), wm.detect(a))


# -- text -----------------------------------------------------------------------------
def test_text_is_split_at_sentences_then_clauses_then_words():
    from engine.chatterbox.text import split_text

    words = len  # a "token" per character keeps the arithmetic visible
    text = "First sentence here. Second one, with a clause; and more. Third!"
    assert split_text(text, words, 100) == [text]
    assert split_text(text, words, 40) == ["First sentence here.", "Second one, with a clause; and more.", "Third!"]
    assert split_text(text, words, 22) == ["First sentence here.", "Second one,", "with a clause;", "and more. Third!"]
    pieces = split_text("x" * 50 + " end.", words, 16)
    assert all(len(p) <= 16 for p in pieces) and "".join(pieces).replace(" ", "") == "x" * 50 + "end."


def test_token_count_for_splitting_equals_the_tokenized_length(ckpt_dir):
    """``count_tokens`` (the Rust tokenizer alone, what ``pieces`` counts with) gives exactly the
    length of ``tokenize`` (what T3 is fed) on words, joins, tags, numbers, odd punctuation and
    other scripts; so a piece's budget is counted as before, only cheaper."""
    engine = ChatterboxEngine(options(ckpt_dir))
    engine._ckpt = load_checkpoint(ckpt_dir, "cpu")
    texts = ["Thank you for calling.", "Thank you for calling. Your appointment is confirmed for",
             "Tuesday", "That is hilarious [laugh] okay, [sigh] let me check that for you.",
             "Your balance is $1,234.56, due on March 15th; call 555-0123 or press 2.",
             "Wait... really?! Yes -- (I think so); let's see: one, two, three.", "  spaced   out  ",
             "Grüße, señor — 東京 😀", "x" * 300, "a", "lowercase without end", "¿Qué?"]
    for text in texts:
        assert engine.count_tokens(text) == int(engine.tokenize(text).numel()), text
    api_text = "Thank you for calling. Your appointment is confirmed for Tuesday at nine in the morning."
    engine.options.text_budget = 18
    from engine.chatterbox.text import split_text

    want = split_text(api_text, lambda s: int(engine.tokenize(s).numel()), 18)
    assert engine.pieces(api_text) == want and len(want) == 2
    first = engine.pieces(api_text)  # the second time from the cache: equal, and the caller's own list
    first.append("x")
    assert engine.pieces(api_text) == want
    engine.options.text_budget = 100  # another budget is another split
    assert engine.pieces(api_text) == [api_text]


@pytest.mark.parametrize("text, why", [("", "empty"), ("   \n\t ", "empty"), ("?!... -- ;", "no letters"),
                                       ("😀🎉👍", "no letters"), ("a" * 4097, "at most 4096")])
def test_text_with_nothing_to_say_is_refused_clearly(text, why):
    from engine.chatterbox.text import check_text

    with pytest.raises(EngineError, match=why):
        check_text(text)


def test_long_and_odd_text_through_the_engine(ckpt_dir):
    """A text over one utterance's budget becomes consecutive utterances streamed back to back (the
    next one submitted when the current one starts, so it waits in its queue, not the caller);
    unknown tags and emoji beside words are speech; nothing to say is a clear error."""
    long_text = "Your appointment is confirmed. Please hold the line, thank you."
    opts = options(ckpt_dir, max_tokens=12, max_len=512, seed=1)

    async def main():
        engine = ChatterboxEngine(opts)
        await engine.start()
        try:
            pieces = engine.pieces(long_text)
            sizes, first_done = [], None
            submitted = []
            real_submit = engine._scheduler.submit
            engine._scheduler.submit = lambda req: (submitted.append(time.perf_counter()), real_submit(req))[1]
            async for chunk in engine.stream(long_text, VoiceSpec()):
                sizes.append(chunk.size)
                if first_done is None and sum(sizes) >= (12 + 3) * TOKEN_SAMPLES:
                    first_done = time.perf_counter()  # the first utterance's audio is all out
            long_submits = len(submitted)  # (the odd texts below submit too)
            odd = []
            for text in ("[foo] hello [bar]", "Hi 😀 there", "..."):
                try:
                    odd.append(sum(c.size for c in await asyncio.wait_for(_collect(engine.stream(text, VoiceSpec())),
                                                                          120)))
                except EngineError as exc:
                    odd.append(str(exc))
            big = engine.pieces("Hello there, how are you today? " * 128)  # 4,096 characters
            return pieces, sizes, submitted[:long_submits], first_done, odd, big, engine.text_budget()
        finally:
            await engine.close()

    pieces, sizes, submitted, first_done, odd, big, budget = asyncio.run(main())
    assert len(pieces) >= 2 and " ".join(pieces) == " ".join(long_text.split())
    assert len(submitted) == len(pieces)
    assert submitted[1] < first_done  # the second utterance was on its way while the first still played
    # every utterance whole (speech capped at max_tokens, + 3 silence tokens), no audio lost or added
    assert sum(sizes) == len(pieces) * (12 + 3) * TOKEN_SAMPLES - LEAD_ZEROS  # the stream's zeroed lead-in dropped
    assert odd[0] > 0 and odd[1] > 0 and "no letters" in odd[2]
    assert len(big) > 1 and all(len(p) > 0 for p in big)
    assert budget == 8  # 12 speech tokens hold 1 text token (8 each): the floor of 8 applies


# -- stop token -----------------------------------------------------------------------
def test_a_stop_token_ends_the_utterance_where_the_checkpoint_puts_it(ckpt_dir, tmp_path):
    """T3 doctored so that its stop logit wins from position P on (a spike in one dimension of the
    position embedding, read by the speech head's stop row): stock chatterbox and our engine both
    end the utterance there, and the audio holds exactly those tokens (+ 3 silence tokens)."""
    from engine.chatterbox.random_checkpoint import doctor_stop_at
    from engine.chatterbox.t3_runner import T3Runner

    ckpt = load_checkpoint(ckpt_dir)
    text = "Hello there."
    ids = ckpt.tokenizer(text, return_tensors="pt").input_ids
    prefix = T3Runner(ckpt.t3, "cpu", torch.float32, max_slots=1, max_len=512).voice_prefix(ckpt.conds.t3).length
    stop_at = 9  # speech tokens before the stop
    position = prefix + ids.shape[1] + stop_at  # the start token sits at prefix + text; token k is read off k after it
    bad = doctor_stop_at(ckpt_dir, tmp_path / "ckpt", position)
    doctored = load_checkpoint(bad)
    torch.manual_seed(0)
    stock = doctored.t3.inference_turbo(doctored.conds.t3, ids, max_gen_len=60)[0].tolist()
    assert [t for t in stock if t < 6561] == stock[:stop_at] and len([t for t in stock if t < 6561]) == stop_at

    _, (chunks,) = speak(options(bad, max_tokens=60, seed=3), [text])
    audio = np.concatenate(chunks)
    assert audio.size == (stop_at + 3) * TOKEN_SAMPLES - LEAD_ZEROS
    # the stream starts on its fade-in's ramp, not on the stock fade's 20 ms of zeros: the first frame is heard
    assert np.abs(audio[:LEAD_ZEROS]).max() > 0


# -- sampling settings and seeds ------------------------------------------------------
def test_a_seed_gives_the_same_tokens_twice_batched_or_alone(ckpt_dir):
    """Stock sampling (temperature 0.8, top-k 1000, top-p 0.95, penalty 1.2): the same seed gives the
    same tokens alone, again, and beside other utterances; another seed other tokens."""
    from engine.chatterbox.t3_runner import SamplingParams, T3Runner

    ckpt = load_checkpoint(ckpt_dir)
    stock = SamplingParams()
    ids = [ckpt.tokenizer(t, return_tensors="pt").input_ids[0] for t in ("Hello there.", "Press one.", "Hi.")]

    def run(slots, texts, seeds, steps=25):
        r = T3Runner(ckpt.t3, "cpu", torch.float32, max_slots=4, max_len=512)
        r.admit_many(slots, r.voice_prefix(ckpt.conds.t3), texts, [stock] * len(slots), seeds)
        out = [[int(r.tokens[s])] for s in slots]
        for _ in range(steps):
            new = r.step(len(slots)).tolist()
            for i, s in enumerate(slots):
                out[i].append(new[s])
        return out

    alone = run([0], ids[:1], [42])[0]
    assert run([0], ids[:1], [42])[0] == alone
    batched = run([0, 1, 2], [ids[1], ids[0], ids[2]], [7, 42, 9])
    assert batched[1] == alone
    assert run([0], ids[:1], [43])[0] != alone
    assert len(set(alone)) > 5  # sampled, not a constant


def test_sampling_settings_per_voice_are_validated_and_applied(ckpt_dir):
    from engine.chatterbox.generation import settings_for

    opts = options(ckpt_dir)
    params, seed = settings_for(opts, VoiceSpec("v", (("top_k", 1), ("seed", 5))))
    assert (params.temperature, params.top_k, params.top_p, params.repetition_penalty, seed) == (0.8, 1, 0.95, 1.2, 5)
    for key, value, why in (("temperature", 0, "> 0.0"), ("top_p", 1.5, "<= 1.0"), ("top_k", 2.5, "an integer"),
                            ("seed", -1, ">= 0"), ("repetition_penalty", "x", "a number")):
        with pytest.raises(EngineError, match=f"{key}: must be .*{why}"):
            settings_for(opts, VoiceSpec("v", ((key, value),)))
    # through the engine: a request's seed makes its speech repeatable (tokens and S3Gen noise)
    seeded = VoiceSpec("v", (("seed", 11), ("temperature", 0.9)))
    _, (a, b) = speak(options(ckpt_dir, max_tokens=12), ["Hello."] * 2, voice=seeded)
    assert np.array_equal(np.concatenate(a), np.concatenate(b))
    _, (d,) = speak(options(ckpt_dir, max_tokens=12), ["Hello."], voice=VoiceSpec("v", (("seed", 12),)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(d))


def test_fast_path_and_sampling_settings_reach_the_engine_from_the_config_files(tmp_path):
    """server.yaml's switches (each compared path a setting) and prompts.yaml's per-voice sampling."""
    from config import load_prompts, load_server
    from sip_tts.chatterbox_options import chatterbox_options
    from sip_tts.script import voice_spec

    (tmp_path / "server.yaml").write_text(
        "engine:\n  kind: chatterbox\n  model_dir: ckpt\n  device: cpu\n  dtype: float32\n  vocoder_dtype: float32\n"
        "  reference_attention: full\n  cuda_graphs: false\n  startup_checks: false\n  watermark: false\n"
        "  seed: 5\n  voice_wav: agent.wav\n")
    (tmp_path / "prompts.yaml").write_text('voices:\n  calm: {temperature: 0.5, top_k: 50, seed: 3}\ndefault: "hi"\n')
    cfg = load_server(str(tmp_path / "server.yaml"))
    opts, wav = chatterbox_options(cfg)
    assert (opts.dtype, opts.vocoder_dtype, opts.reference_attention, opts.cuda_graphs, opts.startup_checks,
            opts.watermark, opts.seed) == ("float32", "float32", "full", False, False, False, 5)
    assert wav == opts.voice_wav == str(tmp_path / "agent.wav") and opts.model_dir == str(tmp_path / "ckpt")
    prompts = load_prompts(cfg.prompts_path())
    spec = voice_spec("calm", prompts.voices["calm"], VoiceSpec("default", (("voice_wav", wav),)), "chatterbox",
                      prompts)
    assert dict(spec.settings) == {"voice_wav": wav, "temperature": 0.5, "top_k": 50, "seed": 3}
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  kind: chatterbox\n  model_dir: ckpt\n  reference_attention: sideways\n")
    from config import ConfigError

    with pytest.raises(ConfigError, match="reference_attention"):
        load_server(str(bad))
