"""What `fit` and `export` read from a calibration store, checked once, as DataFrames.

`load_fit_data(db)` refuses a store that cannot be fitted with an `InputError` naming the store,
the reason and the command that fixes it: no store, no complete runs, runs of several models,
no sensitivities, no measured caching errors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calibration.objectives import RunSpec
from policies import InputError, SchedulerInfo, SensitivityTable
from sencache.adapters import transformer_class_of_pipeline

__all__ = ["FitData", "load_fit_data"]

logger = logging.getLogger(__name__)


#: Keys of `runs.extra` that describe the collect itself, not the pipeline call.
_COLLECT_BOOKKEEPING = {"k_max", "propagation_points", "propagation_direction", "mask_runs", "transformer_class"}


def _collect_cmd(db: Path, model: str | None = None) -> str:
    return f"`sencache-calibrate collect --model {model or '<model>'} --db {db}`"


@dataclass
class FitData:
    """The complete runs of one model and their per-step rows."""

    path: Path
    runs: pd.DataFrame
    steps: pd.DataFrame
    sensitivities: pd.DataFrame
    cache_errors: pd.DataFrame
    propagation: pd.DataFrame
    estimator: str
    digest: str = ""
    #: per (run, step, lag, reuse mode) the measured error (store schema 2); may be empty
    reuse_errors: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: what a skipped step of each mode still computes, measured by `collect` (None: not measured)
    skip_costs: dict[str, float] | None = None
    #: per (run, reuse mode, mask) the final error of a whole static schedule really run (schema 4)
    mask_errors: pd.DataFrame = field(default_factory=pd.DataFrame)

    # --- what the runs share -------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        names = self.runs["model_name"].dropna() if "model_name" in self.runs else pd.Series([], dtype=str)
        return str(names.iloc[0]) if len(names) else "model"

    @property
    def fingerprint(self) -> str:
        return str(self.runs["model_fingerprint"].iloc[0])

    @property
    def model_class(self) -> str:
        """The transformer class: from the run's `extra`, else from its pipeline class."""
        row = self.runs.iloc[0]
        extra = _json(row.get("extra")) or {}
        if isinstance(extra, dict) and extra.get("transformer_class"):
            return str(extra["transformer_class"])
        pipeline = row.get("pipeline_class")
        if isinstance(pipeline, str) and pipeline:
            return transformer_class_of_pipeline(pipeline) or pipeline
        return "unknown"

    def scheduler(self) -> SchedulerInfo:
        row = self.runs.iloc[0]
        config = _json(row.get("scheduler_config")) or {}
        return SchedulerInfo(str(row.get("scheduler_class") or "unspecified"), config if isinstance(config, dict) else {})

    def run_ids(self, split: str) -> list[str]:
        return sorted(self.runs.loc[self.runs["split"] == split, "run_id"].astype(str))

    @property
    def num_steps(self) -> int:
        """The most common step count of the calibration runs."""
        return int(self.runs["num_steps"].mode().iloc[0])

    # --- the sensitivity table -----------------------------------------------------------------
    def sensitivity_table(self) -> SensitivityTable:
        """``J_x(t)``, ``J_t(t)``: the median over calib runs (of the usual step count) per step."""
        calib = self.runs[(self.runs["split"] == "calib") & (self.runs["num_steps"] == self.num_steps)]
        if calib.empty:
            calib = self.runs[self.runs["num_steps"] == self.num_steps]
        ids = set(calib["run_id"])
        sens = self.sensitivities[self.sensitivities["run_id"].isin(ids)]
        steps = self.steps[self.steps["run_id"].isin(ids)][["run_id", "step", "timestep"]]
        joined = sens.merge(steps, on=["run_id", "step"], how="inner")
        per_step = joined.groupby("step").agg(timestep=("timestep", "median"), J_x=("J_x", "median"), J_t=("J_t", "median"))
        per_step = per_step.dropna(subset=["timestep"])
        per_step = per_step[np.isfinite(per_step["J_x"]) | np.isfinite(per_step["J_t"])]
        if per_step.empty:
            raise InputError(
                f"{self.path}: no step has both a timestep and a sensitivity; re-collect with {_collect_cmd(self.path)}"
            )
        per_step["J_x"] = per_step["J_x"].interpolate(limit_direction="both").fillna(0.0)
        per_step["J_t"] = per_step["J_t"].interpolate(limit_direction="both").fillna(0.0)
        per_step = per_step.drop_duplicates(subset="timestep")
        t = per_step["timestep"].to_numpy(np.float64)
        order = np.argsort(-t)  # diffusion order: descending timesteps
        return SensitivityTable(
            tuple(t[order]),
            tuple(np.clip(per_step["J_x"].to_numpy(np.float64)[order], 0, None)),
            tuple(np.clip(per_step["J_t"].to_numpy(np.float64)[order], 0, None)),
            estimator=self.estimator,
        )

    # --- regression pairs ----------------------------------------------------------------------
    def pairs(self, table: SensitivityTable | None = None) -> pd.DataFrame:
        """One row per (run, reference step r, lag k): ``u = J_x(t_r)·dx``, ``v = J_t(t_r)·dt``.

        J is read from the policy's table at ``t_r`` (as the runtime will), not from the run's own
        estimate, so the fit is of the score that will actually be deployed.
        """
        table = table or self.sensitivity_table()
        steps = self.steps[["run_id", "step", "timestep"]]
        pairs = self.cache_errors.merge(steps, on=["run_id", "step"], how="left")
        pairs = pairs.merge(self.runs[["run_id", "split", "num_steps"]], on="run_id", how="left")
        jx, jt = table.interpolate(pairs["timestep"].to_numpy(np.float64))
        pairs["u"] = np.asarray(jx) * pairs["dx"].to_numpy(np.float64)
        pairs["v"] = np.asarray(jt) * pairs["dt"].to_numpy(np.float64)
        pairs["p"] = (pairs["step"] + pairs["lag"]) / (pairs["num_steps"] - 1).clip(lower=1)
        return pairs

    def mode_pairs(self, table: SensitivityTable | None = None) -> pd.DataFrame:
        """One row per (run, step r, lag k, reuse mode): the predictor's terms and the error
        (`calibration.modefit.mode_pairs`)."""
        from calibration.modefit import mode_pairs

        return mode_pairs(self.steps, self.runs, self.cache_errors, self.reuse_errors,
                          table or self.sensitivity_table())

    # --- propagation gain ----------------------------------------------------------------------
    def gain_curve(self, mode: str = "none") -> tuple[np.ndarray, np.ndarray] | None:
        """The median propagation gain G of reuse mode `mode` over runs at each measured position
        p, or None."""
        prop = self.propagation.dropna(subset=["gain"]) if len(self.propagation) else self.propagation
        if prop is None or prop.empty:
            return None
        if "mode" in prop:
            prop = prop[prop["mode"].astype(str) == mode]
        prop = prop.merge(self.runs[["run_id", "num_steps"]], on="run_id")
        prop = prop[np.isfinite(prop["gain"]) & (prop["gain"] > 0)]
        if prop.empty:
            return None
        prop = prop.assign(p=prop["step"] / (prop["num_steps"] - 1).clip(lower=1))
        curve = prop.groupby("p")["gain"].median().sort_index()
        return curve.index.to_numpy(np.float64), curve.to_numpy(np.float64)

    # --- what to rerun -------------------------------------------------------------------------
    def run_specs(self, split: str) -> list[RunSpec]:
        out = []
        for _, row in self.runs[self.runs["split"] == split].sort_values("run_id").iterrows():
            call: dict[str, Any] = {}
            for col in ("guidance_scale", "height", "width", "num_frames"):
                value = row.get(col)
                if value is not None and not (isinstance(value, float) and np.isnan(value)):
                    call[col] = float(value) if col == "guidance_scale" else int(value)
            extra = _json(row.get("extra")) or {}
            if isinstance(extra, dict):  # collect keeps other call arguments there (max_sequence_length)
                call.update({k: v for k, v in extra.items() if k not in _COLLECT_BOOKKEEPING})
            out.append(RunSpec(str(row["prompt"]), int(row["seed"]), int(row["num_steps"]), call))
        return out


def _json(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return None


def _open(db: Path) -> Any:
    from store.database import CalibrationStore

    return CalibrationStore(db, read_only=True)


def _frame(reader: Any, name: str) -> pd.DataFrame:
    frame = getattr(reader, name)()
    return frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)


def load_fit_data(db: str | Path, model: str | None = None) -> FitData:
    """Read the complete runs of the store at `db` and check that they can be fitted."""
    path = Path(db)
    if not path.exists():
        raise InputError(f"{path}: no such calibration store; create it with {_collect_cmd(path, model)}")
    store = _open(path)
    try:
        digest = store.content_digest()
        runs = _frame(store, "runs")
        steps = _frame(store, "steps")
        sens = _frame(store, "sensitivities")
        errors = _frame(store, "cache_errors")
        prop = _frame(store, "propagation")
        reuse = _frame(store, "reuse_errors") if hasattr(store, "reuse_errors") else pd.DataFrame()
        masks = _frame(store, "mask_errors") if hasattr(store, "mask_errors") else pd.DataFrame()
        costs = _json(dict(getattr(store, "meta", {}) or {}).get("skip_costs"))
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    if "status" in runs:
        runs = runs[runs["status"].fillna("complete") == "complete"]
    if runs.empty:
        raise InputError(f"{path}: the store holds no complete runs; fill it with {_collect_cmd(path, model)}")
    fingerprints = sorted(runs["model_fingerprint"].astype(str).unique())
    if len(fingerprints) > 1:
        names = sorted(runs["model_name"].dropna().astype(str).unique()) if "model_name" in runs else []
        raise InputError(
            f"{path}: the store mixes runs of {len(fingerprints)} models (fingerprints {', '.join(fingerprints)}"
            f"{'; names ' + ', '.join(names) if names else ''}); a policy is fitted for one model. "
            f"Collect each model into its own store ({_collect_cmd(Path('<model>.duckdb'))}) and fit each"
        )
    ids = set(runs["run_id"])
    steps, sens, errors = (df[df["run_id"].isin(ids)] for df in (steps, sens, errors))
    reuse = reuse[reuse["run_id"].isin(ids)] if len(reuse) else reuse
    prop = prop[prop["run_id"].isin(ids)] if len(prop) else prop
    masks = masks[masks["run_id"].isin(ids)] if len(masks) else masks
    sens = sens.dropna(subset=["J_x", "J_t"], how="all") if len(sens) else sens
    if sens.empty:
        raise InputError(
            f"{path}: the store has no sensitivities (J_x, J_t), which the predictor and the policy need; "
            f"re-collect with sensitivities: {_collect_cmd(path, model)}"
        )
    errors = errors.dropna(subset=["residual_error", "dx"]) if len(errors) else errors
    if errors.empty:
        raise InputError(
            f"{path}: the store has no measured caching errors (cache_errors), which the fit regresses on; "
            f"re-collect with {_collect_cmd(path, model)}"
        )
    estimators = sens["estimator"].astype(str).unique().tolist() if "estimator" in sens else ["trajectory"]
    estimator = "trajectory" if "trajectory" in estimators else estimators[0]
    if "estimator" in sens:
        sens = sens[sens["estimator"].astype(str) == estimator]
    logger.info("store %s: %d runs (%d calib, %d holdout), estimator %s", path, len(runs),
                int((runs["split"] == "calib").sum()), int((runs["split"] == "holdout").sum()), estimator)
    if not (runs["split"] == "calib").any():
        raise InputError(
            f"{path}: every run is in the holdout split; the fit needs calibration runs. "
            f"Collect some with {_collect_cmd(path, model)} (split calib)"
        )
    return FitData(path, runs.reset_index(drop=True), steps, sens, errors, prop, estimator, digest, reuse,
                   costs if isinstance(costs, dict) else None, masks)
