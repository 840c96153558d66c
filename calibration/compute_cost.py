"""What a skipped step still costs, in the bench's units: the block stack's Linear MACs.

Plain reuse and the linear residual forecast skip the whole block stack, so their compute is the
fraction of stack evaluations. Forecast "taylor" does not: a skipped row still runs every block's
cheap parts (norms, timestep modulation, gates) and only its `forecast_modules` are forecast. On
CogVideoX the modulation Linears of `norm1`/`norm2` run on every skipped step; the bench
(`calibration.baselines._counter`) counts them, and a "taylor" point fitted to 0.40 of the steps
measured 0.406 of the compute there, so the bench could not put it at 0.4.

`measure_skip_costs` measures the share once per model (one short pipeline call with a forward
hook on every Linear of the stack), and `CostedObjective` states every evaluation's compute in
those units: ``compute = steps + (1 − steps)·cost(mode)``. The fit's search, its level bisection
and the points it ships then aim at the compute the bench will measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

__all__ = ["CostedObjective", "SkipCosts", "measure_skip_costs"]


@dataclass(frozen=True)
class SkipCosts:
    """Per reuse mode, the compute of a skipped step as a fraction of a computed one (0: none)."""

    taylor: float = 0.0

    def of(self, forecast: str) -> float:
        return self.taylor if forecast == "taylor" else 0.0

    def compute(self, forecast: str, steps_fraction: float) -> float:
        """The compute fraction of a point of `forecast` that evaluates `steps_fraction` of its stack."""
        cost = self.of(forecast)
        return float(steps_fraction) + (1.0 - float(steps_fraction)) * cost

    def static_steps(self, forecast: str, compute: float, num_steps: int) -> int:
        """The most computed steps out of `num_steps` whose compute stays at or below `compute`
        (at least 2: the first and the last), so a static point of this mode never measures above its target."""
        cost = self.of(forecast)
        steps = (float(compute) - cost) / max(1.0 - cost, 1e-12)
        return int(min(num_steps, max(2, math.floor(steps * num_steps + 1e-9))))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkipCosts:
        """The costs `to_dict` wrote (as `collect` keeps them in the store's `meta.skip_costs`)."""
        return cls(taylor=float(data.get("taylor", 0.0)))

    def to_dict(self) -> dict[str, float]:
        return {"taylor": self.taylor}


class _LinearTally:
    """Forward hooks on every Linear of the block stack: MACs inside forecast modules and outside."""

    def __init__(self, transformer: torch.nn.Module, adapter: Any) -> None:
        self.forecast = 0.0
        self.other = 0.0
        self._handles = []
        for block in adapter.blocks(transformer):
            inside = {id(m) for name in adapter.forecast_module_names(block)
                      for m in getattr(block, name).modules()}
            for module in block.modules():
                if isinstance(module, torch.nn.Linear):
                    self._handles.append(module.register_forward_hook(self._hook(id(module) in inside)))

    def _hook(self, forecast: bool):
        def hook(module: torch.nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0]
            macs = float(x.numel() // max(x.shape[-1], 1)) * module.weight.numel()
            if forecast:
                self.forecast += macs
            else:
                self.other += macs
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def measure_skip_costs(pipe: Any, call_kwargs: dict[str, Any], prompt: str = "a calibration prompt") -> SkipCosts:
    """Run `pipe` once (two steps, latent output) and measure what a "taylor" skip still runs: the
    Linear MACs outside the adapter's forecast modules over all of the stack's Linear MACs."""
    from sencache.adapters import architecture_for

    transformer = pipe.transformer
    adapter = architecture_for(transformer)
    if not adapter.forecast_modules:
        return SkipCosts()
    tally = _LinearTally(transformer, adapter)
    try:
        kwargs = {**call_kwargs, "num_inference_steps": 2}
        pipe(prompt=[prompt], generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
    finally:
        tally.remove()
    total = tally.forecast + tally.other
    return SkipCosts(taylor=tally.other / total if total > 0 else 0.0)


class CostedObjective:
    """An objective whose evaluations state compute in the bench's units (see the module docstring)."""

    def __init__(self, inner: Any, costs: SkipCosts) -> None:
        self.inner = inner
        self.costs = costs
        self.kind = inner.kind

    def __getattr__(self, name: str) -> Any:  # runs, pipe, policy_for: the inner objective's
        return getattr(self.inner, name)

    def evaluate(self, predictor: Any, point: Any) -> Any:
        result = self.inner.evaluate(predictor, point)
        if not self.costs.of(point.forecast):
            return result
        convert = lambda f: self.costs.compute(point.forecast, f)  # noqa: E731
        return replace(result, nfe_fraction=convert(result.nfe_fraction),
                       per_run_nfe=[convert(f) for f in result.per_run_nfe])
