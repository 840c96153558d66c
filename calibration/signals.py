"""The peers' per-step signals, computed from what the recorder already sees.

- TeaCache: relative L1 change of the first block's *modulated* input (the normalised tokens
  after the timestep shift/scale of the attention branch), `‖m_i − m_{i−1}‖₁ / ‖m_{i−1}‖₁`.
- FBCache (first-block cache): relative L1 change of block 0's residual.
- MagCache: the magnitude ratio of the block-stack residual, `‖R_i‖ / ‖R_{i−1}‖` (RMS).

All are per sample (row); a zero denominator gives None, never inf/NaN.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from sencache.adapters import Architecture

__all__ = ["modulated_input", "ratio", "relative_l1"]

logger = logging.getLogger(__name__)


def ratio(num: torch.Tensor, den: torch.Tensor) -> list[float | None]:
    """`num / den` per row as Python floats; None where the denominator is 0 or anything is not finite."""
    out: list[float | None] = []
    for n, d in zip(num.detach().double().cpu().tolist(), den.detach().double().cpu().tolist()):
        if d == 0.0 or not math.isfinite(d) or not math.isfinite(n):
            out.append(None)
            continue
        value = n / d
        out.append(value if math.isfinite(value) else None)
    return out


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> list[float | None]:
    """`mean|current − previous| / mean|previous|` per row (TeaCache's and FBCache's measure)."""
    current, previous = current.float(), previous.float()
    num = (current - previous).abs().flatten(1).mean(dim=1)
    den = previous.abs().flatten(1).mean(dim=1)
    return ratio(num, den)


def modulated_input(architecture: Architecture, block: torch.nn.Module, block_args: dict[str, Any]) -> torch.Tensor | None:
    """Block 0's modulated input as `architecture` describes it; None when it describes none.

    The formula lives in the architecture's description (`Architecture.modulated_input`), e.g.
    Wan's `norm1(h)·(1 + scale_msa) + shift_msa`.
    """
    if architecture.modulated_input is None:
        return None
    if block_args.get("hidden_states") is None or block_args.get("temb") is None:
        return None
    try:
        return architecture.modulated_input(block, block_args)
    except Exception as exc:  # a signal is optional: never let it break a collect
        logger.debug("no TeaCache signal for %s: %s", architecture.name, exc)
    return None
