"""One CUDA graph per (batch, length) bucket of a function of static tensors.

The flow encoder, the meanflow solve and the vocoder are each captured this way
(``EncoderGraphs``, ``FlowGraphs``, ``VocoderGraphs``): a call pads its batch to
the next bucket of ``batches`` rows and ``step`` positions, fills that bucket's
static inputs and replays its graph. What they share lives here:

* bucketing (a batch larger than the largest bucket is an error, not a new graph);
* one eager warm-up before the first capture, outside it: lazy initialisation
  (cuBLAS/cuDNN handles, autotuning, Triton compilation) cannot happen inside a
  capture; the blocks it cached are released, because the graphs' private pool
  cannot reuse them;
* capture largest first, so the shared pool is sized by the first capture and
  every smaller bucket fits in it.

A subclass says what the inputs are (``_inputs``) and what is captured (``_run``).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


class BucketGraphs:
    def __init__(self, device: torch.device, batches: tuple[int, ...], step: int, what: str) -> None:
        self.device = device
        self.batches = batches
        self.step = step
        self.what = what  # for errors: "flow", "encoder", "vocoder"
        self.pool = torch.cuda.graph_pool_handle()
        self.warm = False
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], Any]] = {}
        self.late_captures = 0  # buckets first met in service (a capture there stalls the worker)

    # -- what a subclass provides ----------------------------------------------------
    def _inputs(self, b: int, length: int) -> dict[str, torch.Tensor]:
        """Static input tensors of a (b, length) bucket, holding values the function accepts."""
        raise NotImplementedError

    def _run(self, **ins: torch.Tensor) -> Any:
        """The function captured (tensors in, tensors out)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    def bucket(self, b: int, length: int) -> tuple[int, int]:
        bb = next((x for x in self.batches if x >= b), None)
        if bb is None:
            raise ValueError(f"{self.what} batch {b} exceeds {self.batches[-1]}")
        return bb, -(-length // self.step) * self.step

    @torch.inference_mode()  # no autograd records (they would keep every activation alive)
    def _capture(self, b: int, length: int) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], Any]:
        ins = self._inputs(b, length)
        if not self.warm:
            self._run(**ins)
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self.warm = True
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._run(**ins)
        self.graphs[(b, length)] = (graph, ins, out)
        return self.graphs[(b, length)]

    def capture_lengths(self, lengths: Iterable[int]) -> None:
        """Every batch bucket for each length bucket that ``lengths`` touch, largest first."""
        wanted = sorted({self.bucket(1, n)[1] for n in lengths}, reverse=True)
        for b in reversed(self.batches):
            for length in wanted:
                if (b, length) not in self.graphs:
                    self._capture(b, length)

    def capture_all(self, max_length: int) -> None:
        """Every bucket up to ``max_length`` positions."""
        self.capture_lengths(range(1, max_length + 1))

    def entry(self, b: int, length: int) -> tuple[tuple[int, int], torch.cuda.CUDAGraph, dict[str, torch.Tensor], Any]:
        """The bucket for (b, length): its key, graph, static inputs and outputs (captured if new)."""
        key = self.bucket(b, length)
        if key not in self.graphs:
            self.late_captures += 1
        graph, ins, out = self.graphs.get(key) or self._capture(*key)
        return key, graph, ins, out
