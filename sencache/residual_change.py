"""Each sample's residual change between its last two computed steps: the score's e term.

A forecast extrapolates the residual's change, so how fast a sample's residual is changing tells
where the forecast will miss, sample by sample; it is the score's one term that is not a function
of the timestep alone (`sencache.rule`). The block stack hands every computing row's fresh
residual here (`sencache.stack`, `sencache.taylor`), and this keeps, per cache context, a sketch
of each row's last residual and the step it was computed at, and answers the RMS change per step
``‖R_r − R_r'‖ / (r − r')``.

The sketch is every s-th element of the row's flattened residual, with s chosen so that at most
`MAX_ELEMENTS` are kept per row: the RMS over an evenly strided subset estimates the RMS over
all of it, and a row costs 256 KB in float32 however large the model, where keeping the whole
residual would cost hundreds of MB per context on Wan 2.1 14B (the "taylor" forecast keeps none).
On the toys a residual has fewer elements, so the change is exact, and it equals what `collect`
stores as `steps.residual_change` when r' = r − 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["MAX_ELEMENTS", "ResidualChange"]

#: at most this many elements of a row's residual are kept (its RMS change is estimated on them)
MAX_ELEMENTS = 65536
#: the context whose change a decision reads when the branches of CFG run apart (`collect` measures it)
PREFERRED_CONTEXT = "cond"


@dataclass
class _Rows:
    """One context's rows: the sketch of each row's last residual, its step, its change per step."""

    sketch: torch.Tensor
    step: torch.Tensor
    per_step: torch.Tensor


class ResidualChange:
    """Per cache context, each row's last residual (sketched) and its change per step."""

    def __init__(self) -> None:
        self._contexts: dict[str, _Rows] = {}

    def clear(self) -> None:
        self._contexts.clear()

    def record(self, context: str, rows: torch.Tensor | None, batch: int, residual: torch.Tensor, step: int) -> None:
        """`residual` [n, ...] was just computed at `step` by the rows `rows` (None: all `batch`)."""
        flat = residual.detach().flatten(1)
        stride = max(1, math.ceil(flat.shape[1] / MAX_ELEMENTS))
        sketch = flat[:, ::stride].float().cpu()
        index = torch.arange(batch) if rows is None else rows.detach().cpu().long()
        state = self._contexts.get(context)
        if state is None or state.sketch.shape != (batch, sketch.shape[1]):
            state = self._contexts[context] = _Rows(torch.zeros(batch, sketch.shape[1]),
                                                    torch.full((batch,), -1, dtype=torch.long),
                                                    torch.full((batch,), float("nan"), dtype=torch.float64))
        before = state.step.index_select(0, index)
        gap = (step - before).double()
        change = (sketch - state.sketch.index_select(0, index)).pow(2).mean(dim=1).sqrt().double()
        known = (before >= 0) & (gap > 0)
        per_step = torch.where(known, change / gap.clamp(min=1), torch.full_like(change, float("nan")))
        state.per_step.index_copy_(0, index, per_step)
        state.sketch.index_copy_(0, index, sketch)
        state.step.index_copy_(0, index, torch.full_like(before, int(step)))

    def per_step(self, batch: int) -> torch.Tensor | None:
        """Each row's change per step [batch] (NaN: computed once so far), from the "cond" context
        when the CFG branches run apart, else from the first context of this batch; None if none."""
        preferred = self._contexts.get(PREFERRED_CONTEXT)
        if preferred is not None and preferred.per_step.shape[0] == batch:
            return preferred.per_step
        for state in self._contexts.values():
            if state.per_step.shape[0] == batch:
                return state.per_step
        return None
