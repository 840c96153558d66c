"""Per-sample RMS norms: `‖v‖ = sqrt(mean(v²))` over every non-batch dimension.

RMS rather than Frobenius so that thresholds do not depend on resolution or frame count
(docs/design.md, "The rule"). Computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

import torch

__all__ = ["rms", "rms_diff"]


def rms(v: torch.Tensor) -> torch.Tensor:
    """RMS of each row of `v` ([B, ...] -> [B]); a 0-d or 1-d tensor counts as one value per row."""
    v = v.float()
    if v.ndim <= 1:
        return v.abs()
    return v.pow(2).flatten(1).mean(dim=1).sqrt()


def rms_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS of `a - b` per row."""
    return rms(a.float() - b.float())
