"""Write a randomly initialised Chatterbox Turbo checkpoint in the public file layout.

No weights can be downloaded here, so tests and benchmarks build the real
architecture (or a narrower/shallower T3 in the same layout) with random
weights, save it exactly as the public checkpoint is laid out, and load it
back through ``load_checkpoint``: the same code path real weights take.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import CONDS_FILE, PROMPT_TOKENS, S3GEN_FILE, T3_FILE, VE_FILE

_TOKENIZER_CORPUS = [
    "Thank you for calling. Your appointment is confirmed for tomorrow at nine in the morning.",
    "Hello there. Hi, this is Sarah from customer service. How can I help you today?",
    "I understand you're concerned about the charges on your account. Please hold the line.",
    "The number you dialed is not in service. Press one for sales, two for support, zero for an operator.",
]


def write_tokenizer(root: Path) -> None:
    """A small byte-level BPE tokenizer in the Hugging Face file layout (ids stay below T3's vocab)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_TOKENIZER_CORPUS * 4, trainer)
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
        "bos_token": "<|endoftext|>", "model_max_length": 1024}))


def write_random_checkpoint(root: str | Path, t3_layers: int = 24, t3_width: int = 1024, seed: int = 0,
                            block_stop: bool = False) -> Path:
    """Build random T3/S3Gen/VE modules, save them in the public layout, return the directory.

    ``block_stop`` sets the speech head's bias of the start/stop tokens to -1e4, as
    the stock baseline did: random weights otherwise stop at random points.
    """
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts_turbo import Conditionals
    from safetensors.torch import save_file

    from .checkpoint import gpt2_config_from_state, make_t3

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    # T3: the stock module in Turbo's settings, with the requested GPT-2 shape.
    probe = {"tfmr.wpe.weight": torch.empty(8196, t3_width)}
    probe.update({f"tfmr.h.{i}.ln_1.weight": torch.empty(1) for i in range(t3_layers)})
    t3 = make_t3(gpt2_config_from_state(probe, root / T3_FILE))
    if block_stop:
        with torch.no_grad():
            t3.speech_head.bias[6561:] = -1e4
    state = {k: v.contiguous() for k, v in t3.state_dict().items() if k != "tfmr.wte.weight"}
    save_file(state, str(root / T3_FILE))

    s3gen = S3Gen(meanflow=True)
    s3_state = {k: v.contiguous() for k, v in s3gen.state_dict().items()
                if not k.endswith(("tokenizer._mel_filters", "tokenizer.window", "trim_fade"))}
    save_file(s3_state, str(root / S3GEN_FILE))

    ve = VoiceEncoder()
    save_file({k: v.contiguous() for k, v in ve.state_dict().items()}, str(root / VE_FILE))

    write_tokenizer(root)

    g = torch.Generator().manual_seed(seed + 1)
    t3_cond = T3Cond(
        speaker_emb=torch.randn(1, 256, generator=g).abs() / 16,
        cond_prompt_speech_tokens=torch.randint(0, 6561, (1, PROMPT_TOKENS), generator=g),
        emotion_adv=0.5 * torch.ones(1, 1, 1),
    )
    gen = dict(
        prompt_token=torch.randint(0, 6561, (1, 250), generator=g),
        prompt_token_len=torch.tensor([250]),
        prompt_feat=torch.randn(1, 500, 80, generator=g) * 2 - 6,
        prompt_feat_len=None,
        embedding=torch.randn(1, 192, generator=g),
    )
    Conditionals(t3_cond, gen).save(root / CONDS_FILE)
    return root


def benchmark_checkpoint(root: str | Path, t3_layers: int = 24, t3_width: int = 1024) -> Path:
    """The benchmarks' random checkpoint (full size by default, stop token blocked so lengths
    are forced), written at ``root`` the first time and reused after."""
    if not Path(root, "conds.pt").exists():
        write_random_checkpoint(root, t3_layers, t3_width, seed=0, block_stop=True)
    return Path(root)


def benchmark_texts(n: int) -> list[torch.Tensor]:
    """``n`` fixed texts of 30-40 random text-token ids (T3 benchmarks: prefill and decode)."""
    return [torch.randint(0, 50000, (30 + i % 11,), generator=torch.Generator().manual_seed(i)) for i in range(n)]


# -- doctored copies: each breaks one thing, for the checks that must catch it -------------------
def link_copy(src: str | Path, dst: str | Path) -> Path:
    """A copy of the checkpoint at ``dst`` whose files are hard links to ``src``'s (a full-size
    S3Gen is 1.1 GB; a test suite makes many doctored copies). Replace a file by unlinking it
    first: writing into a linked file would change the original too."""
    import os
    import shutil

    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another file system: a real copy
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)
    return dst


def _copy_with(src: str | Path, dst: str | Path, name: str, change: "callable") -> Path:
    from safetensors.torch import load_file, save_file

    dst = link_copy(src, dst)
    state = load_file(str(dst / name))
    change(state)
    (dst / name).unlink()
    save_file(state, str(dst / name))
    return dst


def doctor_vocoder_overflow(src: str | Path, dst: str | Path) -> Path:
    """HiFT's first convolution biased by 1e5: finite in float32 (the output is clamped), past
    float16's 65,504 (inf, then NaN): the float16 vocoder breaks, nothing else does."""
    def change(state: dict) -> None:
        state["mel2wav.conv_pre.bias"] += 1e5

    return _copy_with(src, dst, S3GEN_FILE, change)


def doctor_t3_ties(src: str | Path, dst: str | Path) -> Path:
    """The speech head's bias raised by 1e4 for every speech token: the same distribution in float32
    (softmax ignores a common offset), all ties in bfloat16 (its step at 1e4 is 64): T3 in bfloat16
    breaks (greedy agreement ~0), nothing else does."""
    def change(state: dict) -> None:
        state["speech_head.bias"][:6561] += 1e4

    return _copy_with(src, dst, T3_FILE, change)


def doctor_stop_at(src: str | Path, dst: str | Path, position: int) -> Path:
    """The stop token forced from cache position ``position`` on: one dimension of the position
    embedding spikes there (50, else 0) and only the speech head's stop row reads it (x10, bias
    -40): below, the stop logit is far below the rest; from there on it wins."""
    from .checkpoint import STOP_SPEECH

    def change(state: dict) -> None:
        wpe, head, bias = state["tfmr.wpe.weight"], state["speech_head.weight"], state["speech_head.bias"]
        wpe[:, 0] = 0
        wpe[position:, 0] = 50.0
        head[:, 0] = 0
        head[STOP_SPEECH, 0] = 10.0
        bias[STOP_SPEECH] = -40.0

    return _copy_with(src, dst, T3_FILE, change)
