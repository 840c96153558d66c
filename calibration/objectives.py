"""How a candidate operating point is scored: final-output error and fraction of steps computed.

Two evaluators with one interface, ``evaluate(predictor, point) -> Evaluation``:

* `calibration.replay.ReplayObjective` (cheap, for large models) simulates the rule on stored
  trajectories: each skipped step's measured error of the point's reuse mode, weighted by the
  measured propagation gain of its position, compounded as re-runs show (see that module).
* `RerunObjective` (the default for small models) applies the candidate policy to the real
  pipeline, runs the calibration prompts (one batched call: every sample decides on its own,
  as at inference), and measures the RMS difference of the final latents against full compute.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from policies import ModelInfo, OperatingPoint, Policy, Predictor, SchedulerInfo, SensitivityTable
from sencache.rule import RuleParams

__all__ = ["Evaluation", "Objective", "RerunObjective", "RunSpec", "rule_params_for"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """Mean final error and mean fraction of steps computed over the evaluated runs."""

    error: float
    nfe_fraction: float
    per_run_error: list[float] = field(default_factory=list)
    per_run_nfe: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        spread = float(np.std(self.per_run_error)) if self.per_run_error else 0.0
        return {"error": self.error, "error_std": spread, "nfe_fraction": self.nfe_fraction, "runs": len(self.per_run_error)}


class Objective(Protocol):
    kind: str

    def evaluate(self, predictor: Predictor, point: OperatingPoint) -> Evaluation: ...


def rule_params_for(predictor: Predictor, table: SensitivityTable, point: OperatingPoint) -> RuleParams:
    """The rule's parameters for a predictor, a sensitivity table and an operating point."""
    return RuleParams.from_parts(predictor, table, point)


# --- rerun ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One calibration prompt: what to call the pipeline with."""

    prompt: str
    seed: int
    steps: int
    call_args: dict[str, Any] = field(default_factory=dict)

    def group_key(self) -> tuple:
        return (self.steps, tuple(sorted((k, repr(v)) for k, v in self.call_args.items())))


class RerunObjective:
    """Apply the candidate to the real pipeline and compare final latents with full compute."""

    kind = "rerun"

    def __init__(self, pipe: Any, table: SensitivityTable, runs: list[RunSpec], model_name: str = "model",
                 batch_size: int = 16) -> None:
        import sencache  # noqa: F401  (fail early if the runtime cannot load this pipeline)
        from policies import config_fingerprint

        if not runs:
            raise ValueError("rerun needs at least one run")
        self.pipe = pipe
        self.table = table
        self.runs = runs
        self.batch_size = batch_size
        transformer = pipe.transformer
        self.model = ModelInfo(type(transformer).__name__, config_fingerprint(dict(transformer.config)), model_name)
        self.scheduler = SchedulerInfo(type(pipe.scheduler).__name__, {})
        self._batches = self._make_batches()
        self._reference = [self._call(batch) for batch in self._batches]

    def _make_batches(self) -> list[list[RunSpec]]:
        groups: dict[tuple, list[RunSpec]] = {}
        for run in self.runs:
            groups.setdefault(run.group_key(), []).append(run)
        out = []
        for group in groups.values():
            for start in range(0, len(group), self.batch_size):
                out.append(group[start : start + self.batch_size])
        return out

    @torch.no_grad()
    def _call(self, batch: list[RunSpec]) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(int(r.seed)) for r in batch]
        kwargs = dict(batch[0].call_args)
        kwargs["num_inference_steps"] = batch[0].steps
        out = self.pipe(prompt=[r.prompt for r in batch], generator=generators, output_type="latent", **kwargs)
        latents = out.frames if hasattr(out, "frames") else out[0]
        return torch.as_tensor(latents).float().cpu()

    def policy_for(self, predictor: Predictor | Mapping[str, Predictor], point: OperatingPoint) -> Policy:
        """A one-point policy; `predictor` may be a mapping reuse mode → predictor (format 2)."""
        if isinstance(predictor, Mapping):
            one = predictor.get(point.forecast, predictor.get("none"))
            return Policy(self.model, self.scheduler, self.table, one, (point,), point.name, {},
                          predictors=dict(predictor))
        return Policy(self.model, self.scheduler, self.table, predictor, (point,), point.name, {})

    def evaluate(self, predictor: Predictor, point: OperatingPoint) -> Evaluation:
        import sencache

        policy = self.policy_for(predictor, point)
        errors: list[float] = []
        nfes: list[float] = []
        runtime_log = logging.getLogger("sencache")
        level = runtime_log.level
        runtime_log.setLevel(max(level, logging.WARNING))  # a summary per trial call is noise here
        handle = sencache.apply(self.pipe, policy)
        try:
            for batch, reference in zip(self._batches, self._reference):
                latents = self._call(batch)
                diff = (latents - reference).flatten(1)
                errors.extend(diff.pow(2).mean(dim=1).sqrt().tolist())
                nfe = handle.report().nfe_fraction
                nfes.extend(np.broadcast_to(nfe, (len(batch),)).tolist() if np.size(nfe) != len(batch) else nfe.tolist())
        finally:
            sencache.remove(self.pipe)
            runtime_log.setLevel(level)
        return Evaluation(float(np.mean(errors)), float(np.mean(nfes)), errors, nfes)
