"""The watermark's cost per window: one window at a time (``Watermarker.apply``) against the
windows of a GPU batch marked together (``Watermarker.apply_many``), on a shape seen before
and on a new one (a first use), with cuDNN on and off for Perth's convolutions.

    python benchmarks/watermark_batch.py [--device cuda] [--out DIR]

Writes watermark_batch.json and .md (card, date, commit from $COMMIT).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine.watermark import Watermarker  # noqa: E402
from engine_bench import run_header, write_results  # noqa: E402
from test_watermark_batch import voiced  # noqa: E402  (the equivalence test's voice-like signal)

SIZES = (6720, 7200, 12000, 24000, 36000)  # window lengths at 24 kHz: 280 ms, 300 ms, 500 ms, 1 s, 1.5 s


def timed(device: str, fn) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    wm = Watermarker(24000, a.device)
    card = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    rows = []
    odd = 5003  # a new length for each first-use measurement (last windows have any length)
    for cudnn in (True, False):
        with torch.backends.cudnn.flags(enabled=cudnn):
            for b, layout in [(int(x), y) for x in a.batches.split(",") for y in ("same", "mixed")]:
                if b == 1 and layout == "mixed":
                    continue
                # same: every window 1 s (streams in their steady state); mixed: the five lengths in turn
                chunks = [voiced(24000 if layout == "same" else SIZES[i % len(SIZES)], i) for i in range(b)]
                wm.apply_many(chunks)  # these shapes seen once
                for c in chunks:
                    wm.apply(c)
                one = float(np.median([timed(a.device, lambda: [wm.apply(c) for c in chunks]) for _ in range(3)]))
                many = float(np.median([timed(a.device, lambda: wm.apply_many(chunks)) for _ in range(3)]))
                odd += 97
                new = [voiced(odd, 1000 + i) for i in range(b)]
                first = timed(a.device, lambda: wm.apply_many(new))
                again = timed(a.device, lambda: wm.apply_many(new))
                err = max(float(np.abs(x - y).max()) for x, y in zip(wm.apply_many(chunks), [wm.apply(c) for c in chunks]))
                rows.append(dict(cudnn=cudnn, batch=b, lengths=layout, one_at_a_time_ms=round(one, 2), batched_ms=round(many, 2),
                                 new_length_first_ms=round(first, 2), new_length_again_ms=round(again, 2),
                                 max_abs_diff=err))
                print(json.dumps(rows[-1]), flush=True)
    result = dict(**run_header(card), torch=torch.__version__, sizes=SIZES, rows=rows)
    head = (f"# Watermark: one window at a time vs a batch ({card}, {result['date']}, commit {result['commit'] or '?'})\n\n"
            "Windows of 1 s ('same') or of 280 ms to 1.5 s in turn ('mixed') at 24 kHz; 'new length': a batch of one "
            "length not seen before (first use) and the same again. Median of 3, ms for the whole batch.\n\n"
            "| cuDNN | windows | lengths | one at a time ms | batched ms | new length: first / again ms | max abs diff |\n"
            "|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {'on' if r['cudnn'] else 'off'} | {r['batch']} | {r['lengths']} | {r['one_at_a_time_ms']} | "
                   f"{r['batched_ms']} | {r['new_length_first_ms']} / {r['new_length_again_ms']} | "
                   f"{r['max_abs_diff']:.1e} |\n" for r in rows)
    write_results(a.out, "watermark_batch", result, head + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
