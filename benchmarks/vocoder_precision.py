"""HiFT (the vocoder) in bfloat16 against float32: speed and audio error, on the GPU.

    python benchmarks/vocoder_precision.py [--model-dir DIR] [--batch 16] [--frames 200]

The convolutions run under autocast (bfloat16); the STFT of the source and the inverse
STFT stay float32. Reports the time of one batched decode and the audio SNR of bfloat16
against float32 for the same mel and source. Writes benchmarks/results/vocoder_precision.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.chatterbox.checkpoint import load_checkpoint  # noqa: E402
from engine.chatterbox.random_checkpoint import benchmark_checkpoint  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    benchmark_checkpoint(a.model_dir)
    dev = torch.device("cuda")
    hift = load_checkpoint(a.model_dir, "cuda").s3gen.mel2wav.eval()
    istft = hift._istft
    hift._istft = lambda mag, phase: istft(mag.float(), phase.float())  # inverse STFT in float32
    g = torch.Generator(device="cpu").manual_seed(0)
    mel = (torch.randn(a.batch, 80, a.frames, generator=g) * 2 - 6).to(dev)
    with torch.inference_mode():
        f0 = hift.f0_predictor(mel)
        s, _, _ = hift.m_source(hift.f0_upsamp(f0[:, None]).transpose(1, 2))
        s = s.transpose(1, 2)
        out: dict[str, torch.Tensor] = {}
        ms: dict[str, float] = {}
        for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
            def run() -> torch.Tensor:
                if dtype is None:
                    return hift.decode(x=mel, s=s)
                with torch.autocast("cuda", dtype=dtype):
                    return hift.decode(x=mel, s=s).float()
            run()
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(10):
                out[name] = run()
            torch.cuda.synchronize(dev)
            ms[name] = (time.perf_counter() - t0) / 10 * 1e3
    ref = out["float32"].double()
    err = out["bfloat16"].double() - ref
    snr = float(10 * torch.log10((ref ** 2).sum() / (err ** 2).sum()))
    audio_s = a.batch * a.frames * 480 / 24000
    result = dict(card=torch.cuda.get_device_name(dev), date=time.strftime("%Y-%m-%d"), batch=a.batch, frames=a.frames, audio_seconds=audio_s,
                  float32_ms=ms["float32"], bfloat16_ms=ms["bfloat16"], speedup=ms["float32"] / ms["bfloat16"],
                  audio_snr_db=snr, weights="random (real architecture)")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "vocoder_precision.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
