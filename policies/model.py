"""The descriptive parts of a policy: which model and scheduler it was made for, and the predictor.

Every class validates itself in `__post_init__` (so one built in code is checked too) and
round-trips through `from_dict` / `to_dict` with the JSON field names of the format. The hidden
init-only `_where` tells the checks where the values came from, so a refusal names the file and the
field path; code that builds these by hand leaves it out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from typing import Any

from policies._fields import Where, check_keys, json_native, number, optional_number, text

__all__ = ["ModelInfo", "Predictor", "SchedulerInfo"]


def _here(where: Where | None, name: str) -> Where:
    return where if where is not None else Where("<code>", name)


@dataclass(frozen=True)
class ModelInfo:
    """The model a policy was calibrated for.

    Args:
        class_name (`str`): the transformer class, e.g. ``"WanTransformer3DModel"`` (JSON key
            ``class``).
        fingerprint (`str`): `policies.config_fingerprint` of the transformer config; a policy
            refuses a model whose fingerprint differs (see `Policy.check_model`).
        name (`str`): a human name: a zoo name, a Hub repo id or a folder.
    """

    class_name: str
    fingerprint: str
    name: str
    _where: InitVar[Where | None] = None

    KEYS = ("class", "fingerprint", "name")

    def __post_init__(self, _where: Where | None) -> None:
        where = _here(_where, "model")
        object.__setattr__(self, "class_name", text(self.class_name, where.at("class")))
        object.__setattr__(self, "fingerprint", text(self.fingerprint, where.at("fingerprint")))
        object.__setattr__(self, "name", text(self.name, where.at("name")))

    @classmethod
    def from_dict(cls, data: Any, where: Where | None = None) -> ModelInfo:
        where = where or Where("<dict>", "model")
        obj = check_keys(data, where, cls.KEYS)
        return cls(obj["class"], obj["fingerprint"], obj["name"], _where=where)

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.class_name, "fingerprint": self.fingerprint, "name": self.name}


@dataclass(frozen=True)
class SchedulerInfo:
    """The scheduler the policy was calibrated with (informational: the runtime may warn on change).

    Args:
        class_name (`str`): e.g. ``"FlowMatchEulerDiscreteScheduler"`` (JSON key ``class``).
        config (`dict`): the scheduler config, JSON values only; copied on construction.
    """

    class_name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    _where: InitVar[Where | None] = None

    KEYS = ("class", "config")

    def __post_init__(self, _where: Where | None) -> None:
        where = _here(_where, "scheduler")
        object.__setattr__(self, "class_name", text(self.class_name, where.at("class")))
        config = json_native(self.config, where.at("config"))
        if not isinstance(config, dict):
            where.at("config").fail(f"must be a JSON object, got {type(config).__name__}")
        object.__setattr__(self, "config", config)

    def __hash__(self) -> int:  # the config is a dict: hash its canonical JSON
        return hash((self.class_name, json.dumps(self.config, sort_keys=True)))

    @classmethod
    def from_dict(cls, data: Any, where: Where | None = None) -> SchedulerInfo:
        where = where or Where("<dict>", "scheduler")
        obj = check_keys(data, where, cls.KEYS)
        return cls(obj["class"], obj["config"], _where=where)

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.class_name, "config": json_native(self.config, Where())}


@dataclass(frozen=True)
class Predictor:
    """The score ``S = a·J_x(t_r)·‖x − x_r‖ + b·J_t(t_r)·|t − t_r| + d·J_t(t_r)·|t − t_r|² + e·ΔR + c``
    and its quality of fit. One per reuse mode in policy format version 2 (``predictors``).

    Args:
        a (`float`): weight of the latent-change term, finite and >= 0 (paper: 1).
        b (`float`): weight of the timestep-change term, finite and >= 0 (paper: 1).
        c (`float`): constant offset, finite and >= 0 (paper: 0).
        r2 (`float` or `None`): R² of the fit on held-out errors, <= 1; None when not fitted.
        spearman (`float` or `None`): Spearman ρ of score vs measured error, in [-1, 1]; None
            when not fitted.
        d (`float`): weight of the second-order timestep term, finite and >= 0 (a forecast's
            error grows with the square of the gap); optional in the file, 0 when absent.
        e (`float`): weight of the residual-change term ``‖R_r − R_r'‖ / (r − r')·(i − r)``, the
            sample's own residual change between its last two computed steps carried over the
            gap (`sencache.rule`), finite and >= 0; optional in the file, 0 when absent. A
            sencache that predates it refuses the key rather than scoring without it.
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0
    r2: float | None = None
    spearman: float | None = None
    d: float = 0.0
    e: float = 0.0
    _where: InitVar[Where | None] = None

    KEYS = ("a", "b", "c", "r2", "spearman")
    OPTIONAL_KEYS = ("d", "e")

    def __post_init__(self, _where: Where | None) -> None:
        where = _here(_where, "predictor")
        for key in ("a", "b", "c", "d", "e"):
            object.__setattr__(self, key, number(getattr(self, key), where.at(key)))
        r2 = optional_number(self.r2, where.at("r2"), low=None, high=1.0)
        rho = optional_number(self.spearman, where.at("spearman"), low=-1.0, high=1.0)
        object.__setattr__(self, "r2", r2)
        object.__setattr__(self, "spearman", rho)

    @classmethod
    def from_dict(cls, data: Any, where: Where | None = None) -> Predictor:
        where = where or Where("<dict>", "predictor")
        obj = check_keys(data, where, cls.KEYS, cls.OPTIONAL_KEYS)
        return cls(**{key: obj[key] for key in cls.KEYS + cls.OPTIONAL_KEYS if key in obj}, _where=where)

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self.KEYS}
        for key in self.OPTIONAL_KEYS:
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

    def score(self, j_x: float, dx: float, j_t: float, dt: float) -> float:
        """The score for one sample: ``a·j_x·dx + b·j_t·dt + d·j_t·dt² + c`` (norms already taken)."""
        return self.a * j_x * dx + self.b * j_t * dt + self.d * j_t * dt * dt + self.c
