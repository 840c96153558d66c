"""Per-architecture adapters. Adding an architecture is one small file and one line here."""

from __future__ import annotations

import torch

from policies.errors import InputError
from sencache.adapters.base import BlockStackAdapter
from sencache.adapters.cogvideox import COGVIDEOX
from sencache.adapters.ltx import LTX
from sencache.adapters.wan import WAN

__all__ = ["ADAPTERS", "BlockStackAdapter", "adapter_for"]

ADAPTERS: dict[str, BlockStackAdapter] = {a.class_name: a for a in (WAN, COGVIDEOX, LTX)}


def adapter_for(transformer: torch.nn.Module) -> BlockStackAdapter:
    """The adapter of `transformer`'s class, or an InputError listing the supported classes."""
    name = type(transformer).__name__
    if name not in ADAPTERS:
        raise InputError(
            f"SenCache does not support {name}; supported transformers: {', '.join(sorted(ADAPTERS))}. "
            "To add one, write an adapter in sencache/adapters/ (see wan.py: a dozen lines)."
        )
    return ADAPTERS[name]
