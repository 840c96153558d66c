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


def modulated_input(block: torch.nn.Module, block_args: dict[str, Any]) -> torch.Tensor | None:
    """Block 0's modulated input for the three supported block classes; None when unknown.

    Wan: `norm1(h)·(1 + scale_msa) + shift_msa` with `(scale_shift_table + temb)`; LTX: the same
    from its reshaped `temb`; CogVideoX: the video half of `norm1(h, text, temb)` (LayerNormZero).
    """
    name = type(block).__name__
    h, temb = block_args.get("hidden_states"), block_args.get("temb")
    if h is None or temb is None:
        return None
    try:
        if name == "WanTransformerBlock":
            if temb.ndim == 4:
                shift, scale = (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]
                shift, scale = shift.squeeze(2), scale.squeeze(2)
            else:
                shift, scale = (block.scale_shift_table + temb.float()).chunk(6, dim=1)[:2]
            return block.norm1(h.float()) * (1 + scale) + shift
        if name == "LTXVideoTransformerBlock":
            n = block.scale_shift_table.shape[0]
            ada = block.scale_shift_table[None, None].to(temb.device) + temb.reshape(h.shape[0], temb.size(1), n, -1)
            shift, scale = ada[:, :, 0], ada[:, :, 1]
            return block.norm1(h) * (1 + scale) + shift
        if name == "CogVideoXBlock":
            return block.norm1(h, block_args["encoder_hidden_states"], temb)[0]
    except Exception as exc:  # a signal is optional: never let it break a collect
        logger.debug("no TeaCache signal for %s: %s", name, exc)
    return None
