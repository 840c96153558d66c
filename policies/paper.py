"""Policies that exist before any fit: the paper's uncalibrated setting, and a flat one for tests.

The paper's rule uses ``a = b = 1, c = 0`` and a two-level ε: a strict level for the first 20% of
the steps and a looser one after. The format's ε is piecewise-linear, so the step is written as a
ramp of width 1e-6 (`EpsSchedule.two_level`): knots ``[0, f, f + 1e-6, 1]`` with values
``[early, early, late, late]``; a step at position ``p <= f`` gets the strict level.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from policies.model import ModelInfo, Predictor, SchedulerInfo
from policies.operating import OperatingPoint
from policies.policy import Policy
from policies.tables import EpsSchedule, SensitivityTable

__all__ = ["constant_policy", "paper_policy"]

#: A fingerprint for policies that are not tied to a real model (tests, examples).
ANY_MODEL = "0" * 16


def _package_version() -> str:
    try:
        return metadata.version("sencache")
    except metadata.PackageNotFoundError:
        return "unknown"


def _provenance(method: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    prov: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": _package_version(),
        "store": None,
        "runs": 0,
        "split": None,
        "metrics": {},
        "method": method,
    }
    prov.update(extra or {})
    return prov


def paper_policy(
    model_class: str,
    fingerprint: str,
    sensitivity: SensitivityTable,
    eps_early: float = 0.1,
    eps_late: float = 0.2,
    early_fraction: float = 0.2,
    max_skips: int = 3,
    name: str = "paper",
    *,
    model_name: str | None = None,
    scheduler: SchedulerInfo | None = None,
    warmup_steps: int | float = 0,
    final_steps: int | float = 0,
    provenance: Mapping[str, Any] | None = None,
) -> Policy:
    """The paper's uncalibrated SenCache policy: ``a = b = 1, c = 0`` and a two-level ε.

    Args:
        model_class (`str`): the transformer class name.
        fingerprint (`str`): `config_fingerprint` of its config.
        sensitivity (`SensitivityTable`): measured `J_x`, `J_t` (or `SensitivityTable.constant()`).
        eps_early (`float`, defaults to `0.1`): ε for ``p <= early_fraction``; higher is faster
            and less faithful. The defaults are starting points, not the paper's tuned values:
            `fit` replaces them.
        eps_late (`float`, defaults to `0.2`): ε after `early_fraction`.
        early_fraction (`float`, defaults to `0.2`): the share of steps held to `eps_early`.
        max_skips (`int`, defaults to `3`): K, the most consecutive skips.
        name (`str`, defaults to `"paper"`): the single operating point's name.
        model_name (`str`, *optional*): a human name for the model; defaults to `model_class`.
        scheduler (`SchedulerInfo`, *optional*): defaults to an ``"unspecified"`` scheduler.
        warmup_steps, final_steps: always-compute zones, as in `OperatingPoint`.
        provenance (`Mapping`, *optional*): entries added to the default provenance.
    """
    point = OperatingPoint(
        name=name,
        eps=EpsSchedule.two_level(eps_early, eps_late, early_fraction),
        max_skips=max_skips,
        warmup_steps=warmup_steps,
        final_steps=final_steps,
    )
    return Policy(
        model=ModelInfo(model_class, fingerprint, model_name or model_class),
        scheduler=scheduler or SchedulerInfo("unspecified", {}),
        sensitivity=sensitivity,
        predictor=Predictor(a=1.0, b=1.0, c=0.0),
        operating_points=(point,),
        default_operating_point=name,
        provenance=_provenance("paper: a=b=1, c=0, two-level eps, not fitted", provenance),
    )


def constant_policy(
    eps: float = 0.1,
    *,
    model_class: str = "AnyTransformer",
    fingerprint: str = ANY_MODEL,
    sensitivity: SensitivityTable | None = None,
    predictor: Predictor | None = None,
    max_skips: int = 3,
    warmup_steps: int | float = 0,
    final_steps: int | float = 0,
    expected_nfe_fraction: float | None = None,
    name: str = "constant",
) -> Policy:
    """A policy with one flat ε, for tests and examples: ε(p) = `eps` at every step.

    By default `J_x = J_t = 1` at every t and ``a = b = 1, c = 0``, so the score is simply
    ``‖x − x_r‖ + |t − t_r|``: easy to work out by hand.
    """
    point = OperatingPoint(
        name=name,
        eps=EpsSchedule.constant(eps),
        max_skips=max_skips,
        warmup_steps=warmup_steps,
        final_steps=final_steps,
        expected_nfe_fraction=expected_nfe_fraction,
    )
    return Policy(
        model=ModelInfo(model_class, fingerprint, model_class),
        scheduler=SchedulerInfo("unspecified", {}),
        sensitivity=sensitivity or SensitivityTable.constant(),
        predictor=predictor or Predictor(),
        operating_points=(point,),
        default_operating_point=name,
        provenance=_provenance("constant eps, not fitted", None),
    )
