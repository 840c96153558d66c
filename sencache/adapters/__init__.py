"""The architecture descriptions, one file each, and the one registry every stage looks them up in.

Adding an architecture is one file here defining `ARCHITECTURE` (see wan.py) and one line in
`_DESCRIPTIONS`. Lookups go by class: a subclass of a supported transformer is served by its
parent's description, and a `torch.compile`d transformer by its original module's.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import torch

from policies.errors import InputError
from sencache.adapters.base import Architecture, BlockStackAdapter, scale_says_cfg

__all__ = [
    "ADAPTERS",
    "ARCHITECTURES",
    "Architecture",
    "BlockStackAdapter",
    "adapter_for",
    "architecture_for",
    "architecture_named",
    "scale_says_cfg",
    "transformer_class_of_pipeline",
    "unwrap",
]

#: the description files of this package (`<name>.py`, each defining `ARCHITECTURE`), in table order
_DESCRIPTIONS = (
    "wan",
    "cogvideox",
    "ltx",
    "hunyuanvideo",
)

#: every supported architecture, in the order tables list them
ARCHITECTURES: tuple[Architecture, ...] = tuple(import_module(f"{__name__}.{n}").ARCHITECTURE for n in _DESCRIPTIONS)

#: transformer class name -> description (for messages and for reading stored class names)
ADAPTERS: dict[str, Architecture] = {a.class_name: a for a in ARCHITECTURES}

_BY_CLASS: dict[type, Architecture] = {a.transformer_class: a for a in ARCHITECTURES}


def unwrap(module: Any) -> Any:
    """The module under `torch.compile`'s `OptimizedModule` wrappers (`_orig_mod`)."""
    while isinstance(module, torch.nn.Module) and isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):
        module = module._orig_mod
    return module


def _lookup(cls: type) -> Architecture | None:
    for klass in cls.__mro__:
        found = _BY_CLASS.get(klass)
        if found is not None:
            return found
    return None


def architecture_for(model: Any) -> Architecture:
    """The description serving `model`: a transformer (subclass, compiled) or a pipeline holding one.

    Raises an InputError listing the supported classes otherwise.
    """
    module = unwrap(model)
    if not isinstance(module, torch.nn.Module):
        transformer = getattr(model, "transformer", None)
        if isinstance(transformer, torch.nn.Module):
            module = unwrap(transformer)
    found = _lookup(type(module))
    if found is None:
        raise InputError(
            f"SenCache does not support {type(module).__name__}; supported transformers: "
            f"{', '.join(sorted(ADAPTERS))}. To add one, describe it in one file in sencache/adapters/ "
            "(see wan.py) and add it to ARCHITECTURES in sencache/adapters/__init__.py"
        )
    return found


#: The name the runtime and the baselines have always called it by.
adapter_for = architecture_for


def architecture_named(name: str) -> Architecture:
    """The description whose short `name` is `name` ("wan", ...), or an InputError listing them."""
    for arch in ARCHITECTURES:
        if arch.name == name:
            return arch
    raise InputError(f"unknown architecture {name!r}; supported: {', '.join(a.name for a in ARCHITECTURES)}")


def transformer_class_of_pipeline(pipeline_class: str) -> str | None:
    """The transformer class name of a stored pipeline class name, when a description has it."""
    for arch in ARCHITECTURES:
        if arch.pipeline == pipeline_class:
            return arch.class_name
    return None
