"""`sencache-paper`: the paper's uncalibrated rule (a = b = 1, c = 0, two-level ε, K = 3).

Sensitivities come from the fitted policy's table when one is given for the same model (it was
measured by `collect` into the store), else from a quick trajectory estimate on a calibration
prompt (docs/design.md, "Sensitivity estimation and measured errors"): one full run records
x_i, t_i, f(x_i, t_i), then one extra forward per step gives g_i = f(x_i, t_{i+1}) and

    J_t(t_i) = ‖g_i − f(x_i, t_i)‖ / |t_{i+1} − t_i|,   J_x(t_i) = ‖f(x_{i+1}, t_{i+1}) − g_i‖ / ‖x_{i+1} − x_i‖.

The knob is the late ε; the early ε (first 20% of steps) is half of it, the paper's 1:2 ratio
(`policies.paper_policy` defaults 0.1 / 0.2).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

import sencache
from calibration.baselines._common import BaselineHandle, bind_args, report_mask, transformer_of
from policies import SensitivityTable, config_fingerprint, paper_policy
from sencache.norms import rms_diff

__all__ = ["apply_sencache_paper", "quick_sensitivity"]

logger = logging.getLogger(__name__)

EARLY_RATIO = 0.5


def quick_sensitivity(pipe: Any, call_kwargs: dict[str, Any], prompts: list[str], seed: int = 0) -> SensitivityTable:
    """Trajectory estimate of J_x(t), J_t(t) on `prompts` (averaged), one extra forward per step."""
    transformer = transformer_of(pipe)
    jx_rows, jt_rows, schedule = [], [], None
    for prompt in prompts:
        records: list[tuple[int, dict[str, Any], torch.Tensor]] = []
        seen: set[float] = set()

        def grab(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            named = bind_args(module, args, kwargs)
            named.pop("self", None)
            t = float(torch.as_tensor(named["timestep"]).float().flatten()[0])
            if t in seen:  # the uncond call of a Wan step: keep the cond one
                return
            seen.add(t)
            out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            records.append((t, named, out.detach()))

        handle = transformer.register_forward_hook(grab, with_kwargs=True)
        try:
            pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **call_kwargs)
        finally:
            handle.remove()
        ts = np.array([r[0] for r in records])
        jx, jt = np.full(len(records), np.nan), np.full(len(records), np.nan)
        with torch.no_grad():
            for i in range(len(records) - 1):
                t_i, named, f_i = records[i]
                t_next, named_next, f_next = records[i + 1]
                kwargs = dict(named)
                kwargs["timestep"] = torch.full_like(torch.as_tensor(named["timestep"]), t_next)
                kwargs["return_dict"] = False
                g = transformer(**kwargs)[0]
                dt = abs(t_next - t_i)
                dx = float(rms_diff(named_next["hidden_states"], named["hidden_states"]).mean())
                if dt > 0:
                    jt[i] = float(rms_diff(g, f_i).mean()) / dt
                if dx > 0:
                    jx[i] = float(rms_diff(f_next, g).mean()) / dx
        jx_rows.append(jx)
        jt_rows.append(jt)
        schedule = ts
    jx = _fill(_nanmean(np.stack(jx_rows)))
    jt = _fill(_nanmean(np.stack(jt_rows)))
    return SensitivityTable(tuple(schedule.tolist()), tuple(jx.tolist()), tuple(jt.tolist()), estimator="trajectory")


def _nanmean(rows: np.ndarray) -> np.ndarray:
    """Column means over the finite entries; NaN where a column has none (no warning)."""
    finite = np.isfinite(rows)
    counts = finite.sum(axis=0)
    sums = np.where(finite, rows, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _fill(values: np.ndarray) -> np.ndarray:
    """Replace steps with no estimate (zero denominators, the last step) by the nearest estimate."""
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return np.ones_like(values)
    idx = np.arange(values.size)
    nearest = ok[np.abs(idx[:, None] - ok[None, :]).argmin(axis=1)]
    return np.maximum(values[nearest], 0.0)


def apply_sencache_paper(pipe: Any, knob: float, sensitivity: SensitivityTable, max_skips: int = 3) -> BaselineHandle:
    """The paper's rule with late ε = `knob`, early ε = knob/2 for the first 20% of the steps."""
    transformer = transformer_of(pipe)
    eps_late = float(knob)
    policy = paper_policy(
        type(transformer).__name__,
        config_fingerprint(dict(transformer.config)),
        sensitivity,
        eps_early=eps_late * EARLY_RATIO,
        eps_late=eps_late,
        max_skips=max_skips,
    )
    runtime = sencache.apply(pipe, policy)

    return BaselineHandle(
        "sencache-paper", eps_late, remove=lambda: sencache.remove(pipe), computed_mask=report_mask(runtime),
        config={"a": 1.0, "b": 1.0, "c": 0.0, "eps_early": eps_late * EARLY_RATIO, "eps_late": eps_late,
                "early_fraction": 0.2, "max_skips": max_skips, "sensitivity": sensitivity.estimator},
    )
