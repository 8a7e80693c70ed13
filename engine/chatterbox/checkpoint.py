"""Load a Chatterbox Turbo checkpoint from a local directory, never from the network.

The directory has the public layout::

    t3_turbo_v1.safetensors   T3: GPT-2 over speech tokens (+ text/speech embeddings and heads)
    s3gen_meanflow.safetensors S3Gen: conformer encoder, meanflow decoder, HiFT vocoder, S3 tokenizer
    ve.safetensors            voice encoder (speaker embedding for T3)
    tokenizer.json (+ vocab.json, merges.txt, tokenizer_config.json ...)  the GPT-2 BPE text tokenizer
    conds.pt                  the built-in voice (T3 and S3Gen conditioning)

The module classes are the stock ones from chatterbox-tts (installed without its
dependencies); the inference path that uses them is ours (``t3_runner``,
``s3gen_streamer``). T3's width and depth are read from the tensors, so a small
checkpoint in the same layout (what the tests write) loads through the same code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

T3_FILE = "t3_turbo_v1.safetensors"
S3GEN_FILE = "s3gen_meanflow.safetensors"
VE_FILE = "ve.safetensors"
CONDS_FILE = "conds.pt"
TOKENIZER_FILES = ("tokenizer.json",)
REQUIRED = (T3_FILE, S3GEN_FILE, VE_FILE, CONDS_FILE, *TOKENIZER_FILES)

# Turbo's token layout (T3Config as ChatterboxTurboTTS.from_local sets it).
TEXT_VOCAB = 50276
SPEECH_VOCAB = 6563
START_SPEECH = 6561
STOP_SPEECH = 6562
PROMPT_TOKENS = 375
HEAD_DIM = 64


class CheckpointError(RuntimeError):
    """A missing or malformed checkpoint file; the message names the file (and tensor)."""


@dataclass
class Checkpoint:
    t3: Any  # chatterbox.models.t3.T3
    s3gen: Any  # chatterbox.models.s3gen.S3Gen
    ve: Any  # chatterbox.models.voice_encoder.VoiceEncoder
    tokenizer: Any  # transformers tokenizer
    conds: Any  # chatterbox.tts_turbo.Conditionals (built-in voice)
    model_dir: Path


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # corrupt header, truncated file ...
        raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from None


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path,
                 ignore_missing: tuple[str, ...] = ()) -> None:
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(ignore_missing)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{path}: missing tensor(s) {shown}")
    if result.unexpected_keys:
        shown = ", ".join(result.unexpected_keys[:5])
        raise CheckpointError(f"{path}: unexpected tensor(s) {shown}")


def gpt2_config_from_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """GPT-2 hyper-parameters read off the tensors (layers, width, positions)."""
    if "tfmr.wpe.weight" not in state:
        raise CheckpointError(f"{path}: missing tensor tfmr.wpe.weight")
    n_positions, width = state["tfmr.wpe.weight"].shape
    layers = {int(m.group(1)) for k in state if (m := re.match(r"tfmr\.h\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError(f"{path}: no transformer layers (tfmr.h.N.*)")
    n_layer = max(layers) + 1
    missing = sorted(set(range(n_layer)) - layers)
    if missing:
        raise CheckpointError(f"{path}: missing tensors of layer(s) {missing}")
    from chatterbox.models.t3.llama_configs import GPT2_MEDIUM_CONFIG

    cfg = dict(GPT2_MEDIUM_CONFIG)
    cfg.update(n_embd=int(width), hidden_size=int(width), n_layer=n_layer, n_head=int(width) // HEAD_DIM,
               n_positions=int(n_positions), n_ctx=int(n_positions))
    return cfg


def make_t3(cfg: dict[str, Any]) -> Any:
    """The stock T3 module with Turbo's settings and the given GPT-2 shape."""
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config

    name = f"GPT2_{cfg['n_layer']}x{cfg['n_embd']}"
    LLAMA_CONFIGS.setdefault(name, cfg)
    hp = T3Config(text_tokens_dict_size=TEXT_VOCAB)
    hp.llama_config_name = name
    hp.speech_tokens_dict_size = SPEECH_VOCAB
    hp.input_pos_emb = None
    hp.speech_cond_prompt_len = PROMPT_TOKENS
    hp.use_perceiver_resampler = False
    hp.emotion_adv = False
    return T3(hp)


def build_t3(state: dict[str, torch.Tensor], path: Path) -> Any:
    if "model" in state:  # some exports nest the state dict
        state = state["model"][0]  # type: ignore[index]
    t3 = make_t3(gpt2_config_from_state(state, path))
    # The public file carries no tfmr.wte (T3 feeds embeddings itself): it may be absent.
    _load_strict(t3, state, path, ignore_missing=("tfmr.wte.weight",))
    del t3.tfmr.wte
    return t3


def load_checkpoint(model_dir: str | Path, device: str = "cpu") -> Checkpoint:
    """Load every part, checking each file first so an error names what is wrong."""
    root = Path(model_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root}: model_dir is not a directory")
    for name in REQUIRED:
        if not (root / name).is_file():
            raise CheckpointError(f"{root / name}: missing checkpoint file")

    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts_turbo import Conditionals
    from transformers import AutoTokenizer

    ve = VoiceEncoder()
    _load_strict(ve, _load_safetensors(root / VE_FILE), root / VE_FILE)
    ve.to(device).eval()

    t3 = build_t3(_load_safetensors(root / T3_FILE), root / T3_FILE)
    t3.to(device).eval()

    s3gen = S3Gen(meanflow=True)
    _load_strict(s3gen, _load_safetensors(root / S3GEN_FILE), root / S3GEN_FILE,
                 ignore_missing=("tokenizer._mel_filters", "tokenizer.window", "trim_fade"))
    s3gen.to(device).eval()

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"{root}: cannot load the text tokenizer ({exc})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    try:
        conds = Conditionals.load(root / CONDS_FILE, map_location="cpu").to(device)
    except Exception as exc:
        raise CheckpointError(f"{root / CONDS_FILE}: cannot load the built-in voice ({exc})") from None
    return Checkpoint(t3, s3gen, ve, tokenizer, conds, root)
