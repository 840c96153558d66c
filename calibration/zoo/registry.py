"""Where the zoo's models live and what arguments each is called with.

Every stage, test and benchmark that calls a toy takes its call arguments from the toy's
`zoo.json` (the diffusers classes default to full-size 480x832x81 videos, which would take
hours here). The `tiny-*` names are random-weight structure fixtures built on the fly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.errors import InputError

__all__ = [
    "MODELS_DIR",
    "TINY_CALL_ARGS",
    "TINY_CALL_OVERRIDES",
    "TINY_MODELS",
    "TOY_MODELS",
    "ZooCard",
    "load_card",
    "tiny_call_args",
    "zoo_folder",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"

#: trained toys: zoo name -> architecture
TOY_MODELS = {"toy-wan": "wan", "toy-cogvideox": "cogvideox", "toy-ltx": "ltx"}
#: random-weight structure fixtures: name -> architecture
TINY_MODELS = {"tiny-wan": "wan", "tiny-cogvideox": "cogvideox", "tiny-ltx": "ltx", "tiny-hunyuanvideo": "hunyuanvideo"}

#: Call arguments of the tiny fixtures: 9 frames of 32x32 -> 5x8x8 latents.
TINY_CALL_ARGS: dict[str, Any] = {
    "height": 32,
    "width": 32,
    "num_frames": 9,
    "guidance_scale": 5.0,
    "max_sequence_length": 16,
    "num_inference_steps": 10,
}

#: per tiny fixture, the call arguments its pipeline needs beyond (or instead of) TINY_CALL_ARGS
TINY_CALL_OVERRIDES: dict[str, dict[str, Any]] = {
    # HunyuanVideo's default template crops 95 tokens of its system prompt, counted with the
    # real Llama tokenizer; the fixture's word-level one counts differently, so no template.
    "tiny-hunyuanvideo": {"prompt_template": {"template": "{}", "crop_start": 0}},
}


def tiny_call_args(name: str) -> dict[str, Any]:
    """The call arguments of tiny fixture `name`: TINY_CALL_ARGS with its overrides."""
    return {**TINY_CALL_ARGS, **TINY_CALL_OVERRIDES.get(name, {})}


@dataclass
class ZooCard:
    """The contents of a toy's `zoo.json`: how to call it and how it was made."""

    name: str
    architecture: str
    call_args: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "call_args": self.call_args,
            "training": self.training,
        }

    def save(self, folder: Path) -> None:
        (Path(folder) / "zoo.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def zoo_folder(name: str) -> Path:
    """The pipeline folder of toy `name` inside the package (it may not exist yet)."""
    if name not in TOY_MODELS:
        raise InputError(f"unknown zoo model {name!r}; the zoo has {', '.join(TOY_MODELS)}")
    return MODELS_DIR / name


def load_card(folder: Path) -> ZooCard | None:
    """Read `folder/zoo.json`, or return None when the folder has none (a non-zoo pipeline)."""
    path = Path(folder) / "zoo.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return ZooCard(
            name=data["name"],
            architecture=data["architecture"],
            call_args=dict(data["call_args"]),
            training=dict(data.get("training", {})),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a valid zoo card ({exc}); retrain with `sencache-calibrate zoo train`") from exc
