"""Resolve `--model`: a zoo name, a tiny fixture name, a local pipeline folder, or a Hub repo id.

All real paths go through `DiffusionPipeline.from_pretrained`, the same call a full-size
checkpoint takes; only the `tiny-*` fixtures are built in memory.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from calibration.zoo.registry import TINY_MODELS, TOY_MODELS, load_card, tiny_call_args, zoo_folder
from policies.errors import InputError

__all__ = ["LoadedModel", "load_model"]

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    """A pipeline with the name it was asked for and the call arguments that suit it."""

    name: str
    pipe: DiffusionPipeline
    call_args: dict[str, Any] = field(default_factory=dict)

    def call_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Default call arguments merged with `overrides` (None values are dropped)."""
        kwargs = dict(self.call_args)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return kwargs


def load_model(spec: str, torch_dtype: torch.dtype | None = None) -> LoadedModel:
    """Load the pipeline that `spec` names; raise `InputError` with the fix when it cannot."""
    if spec in TINY_MODELS:
        from calibration.zoo.architectures import build_pipeline

        return LoadedModel(spec, build_pipeline(TINY_MODELS[spec]), tiny_call_args(spec))
    if spec in TOY_MODELS:
        folder = zoo_folder(spec)
        if not (folder / "model_index.json").exists():
            raise InputError(
                f"zoo model {spec!r} has no weights at {folder}; train it with `sencache-calibrate zoo train {spec}`"
            )
        return _from_folder(spec, folder, torch_dtype)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise InputError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
        return _from_folder(spec, path, torch_dtype)
    if _HUB_ID.match(spec) and not path.exists():
        return _from_hub(spec, torch_dtype)
    raise InputError(
        f"--model {spec!r} is neither a zoo name ({', '.join(TOY_MODELS)}), a tiny fixture "
        f"({', '.join(TINY_MODELS)}), an existing pipeline folder, nor a Hub repo id (owner/name)"
    )


def _from_folder(name: str, folder: Path, torch_dtype: torch.dtype | None) -> LoadedModel:
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = DiffusionPipeline.from_pretrained(str(folder), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    _realign(pipe)
    card = load_card(folder)
    return LoadedModel(name, pipe, dict(card.call_args) if card else {})


def _realign(pipe: DiffusionPipeline) -> None:
    """Copy every weight into freshly allocated memory.

    Weights loaded from safetensors can sit at addresses that are not 64-byte aligned; CPU BLAS
    then takes other kernels, which are slower and round differently, so a loaded pipeline would
    not reproduce the in-memory one bit for bit.
    """
    with torch.no_grad():
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                for tensor in list(component.parameters()) + list(component.buffers()):
                    tensor.data = tensor.data.clone()


def _from_hub(repo_id: str, torch_dtype: torch.dtype | None) -> LoadedModel:
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(repo_id, **kwargs)
    except OSError as exc:
        raise InputError(
            f"could not load {repo_id!r} from the Hugging Face Hub (unreachable from here, or no such repo: "
            f"{type(exc).__name__}). Download it where the Hub can be reached "
            f"(`hf download {repo_id} --local-dir DIR`) and pass --model DIR"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    _realign(pipe)
    return LoadedModel(repo_id, pipe, {})
