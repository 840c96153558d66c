"""`config_fingerprint`: a short stable hash of a transformer config, to tie a policy to a model.

The hash is the first 16 hex digits of the SHA-256 of the config's canonical JSON (sorted keys, no
spaces). Keys that start with ``_`` (``_name_or_path``, ``_diffusers_version``, ``_class_name``)
are bookkeeping, not architecture, and are left out at every level, so the same model saved in
another folder or by another diffusers version keeps its fingerprint. Tuples and lists hash alike
(a config read back from ``config.json`` has lists where the live one may have tuples).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from policies.errors import PolicyError

__all__ = ["config_fingerprint"]

_LENGTH = 16


def _canonical(value: Any) -> Any:
    """`value` as JSON-native data with ``_``-keys dropped; unknown objects by their `str`."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist())
    if isinstance(value, np.generic):
        return _canonical(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan", "inf": json.dumps would write non-standard tokens
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # e.g. a torch.dtype: "torch.bfloat16"


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """The fingerprint of a transformer config: 16 hex digits, independent of key order.

    Args:
        config (`Mapping`): ``transformer.config`` (a diffusers `FrozenDict`) or any mapping; a
            model object with a mapping ``.config`` is accepted for its config.

    Example: ``config_fingerprint({"num_layers": 2, "_name_or_path": "x"}) ==
    config_fingerprint({"num_layers": 2})``.
    """
    if not isinstance(config, Mapping) and isinstance(getattr(config, "config", None), Mapping):
        config = config.config  # a diffusers model: use its config
    if not isinstance(config, Mapping):
        raise PolicyError(
            f"config_fingerprint needs a mapping such as `transformer.config`, got "
            f"{type(config).__name__}. Fix: pass the model's config, not the model."
        )
    body = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:_LENGTH]
