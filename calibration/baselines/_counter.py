"""Measure, never assume, how much of the block stack each method really ran.

`BlockCounter` hangs a plain PyTorch forward hook on every `nn.Linear` inside every block of the
transformer's stack. A Linear fires only when the code around it really runs, whatever a caching
method does above it (a diffusers hook that returns a cached tensor, cache-dit's wrapped blocks,
TaylorSeer predicting an attention output, SenCache running a sub-batch), and no method hooks a
Linear itself. Each call adds `tokens x weight elements` (its multiply-accumulates) to the block's
tally, so:

- a whole-block skip removes that block's share exactly;
- a partial skip (TaylorSeer predicts attention and feed-forward, the norms still run) counts
  partially;
- a sub-batch (SenCache computes only some samples) counts only the rows that ran.

`calls[b]` counts the forwards of block `b`'s self-attention query projection: the number of real
executions of that block. The NFE fraction of a method is its block-stack MACs over those of full compute on the same
prompt and seed (`bench` runs `none` first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["BlockCounter", "CounterSnapshot"]


@dataclass
class CounterSnapshot:
    """What ran since the last `reset`: per block MACs and executions, per transformer call MACs."""

    macs: np.ndarray
    calls: np.ndarray
    per_call: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(self.macs.sum())


def _marker(block: torch.nn.Module, linears: list[torch.nn.Linear]) -> torch.nn.Linear:
    """The Linear whose calls count the block's executions: the self-attention's first projection.

    Not simply the first Linear: CogVideoX's first is the timestep modulation in `norm1`, which
    TeaCache evaluates on its own to decide (a few MACs, but not a block execution).
    """
    for name in ("attn1", "attn"):
        attn = getattr(block, name, None)
        if isinstance(attn, torch.nn.Module):
            for module in attn.modules():
                if isinstance(module, torch.nn.Linear):
                    return module
    return max(linears, key=lambda m: m.weight.numel())


class BlockCounter:
    """Counts real block-stack work on `blocks` (a ModuleList); `transformer` delimits calls."""

    def __init__(self, transformer: torch.nn.Module, blocks: torch.nn.ModuleList) -> None:
        self._handles = []
        self.macs = np.zeros(len(blocks))
        self.calls = np.zeros(len(blocks), dtype=np.int64)
        self.per_call: list[float] = []
        for index, block in enumerate(blocks):
            linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
            if not linears:
                raise ValueError(f"block {index} of {type(transformer).__name__} has no nn.Linear to count")
            marker = _marker(block, linears)
            for linear in linears:
                hook = self._make_hook(index, linear.weight.numel(), linear is marker)
                self._handles.append(linear.register_forward_hook(hook))
        self._handles.append(transformer.register_forward_pre_hook(self._new_call))

    def _make_hook(self, block: int, weight: int, first: bool):
        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            tokens = x.numel() // max(x.shape[-1], 1)
            macs = float(tokens) * weight
            self.macs[block] += macs
            if self.per_call:
                self.per_call[-1] += macs
            if first:
                self.calls[block] += 1

        return hook

    def _new_call(self, module: torch.nn.Module, args: tuple) -> None:
        self.per_call.append(0.0)

    def reset(self) -> None:
        self.macs[:] = 0
        self.calls[:] = 0
        self.per_call = []

    def snapshot(self) -> CounterSnapshot:
        return CounterSnapshot(self.macs.copy(), self.calls.copy(), list(self.per_call))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> BlockCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
