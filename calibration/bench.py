"""`bench`: SenCache against its peers on the same model, prompts and seeds (docs/design.md, "The bench").

For every method and every knob of its sweep, each held-out (prompt, seed) is generated and
compared with the full-compute output of the same pair: PSNR and SSIM of the decoded frames,
RMSE of the final latents, and prompt fidelity where the zoo can read the prompt back. Cost is
measured, never taken from a method's own counter: the block-stack MACs that really ran
(`baselines.BlockCounter`) over those of full compute, and wall-clock speedup. Curves are then
compared at matched NFE fractions (`bench_report.matched`).

    from calibration.bench import run_bench
    result = run_bench("toy-wan", "policies/toy-wan.json", "bench/")
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration import bench_report as report
from calibration.baselines import METHODS, BlockCounter, MethodContext, MethodUnsupported, resolve_methods
from calibration.models import LoadedModel, load_model
from policies import Policy, config_fingerprint
from policies.errors import InputError
from sencache.adapters import adapter_for

__all__ = ["MATCHED_FRACTIONS", "run_bench"]

logger = logging.getLogger(__name__)

MATCHED_FRACTIONS = (0.7, 0.5, 0.4)
DEFAULT_STEPS = 30
_DEFAULT_PROMPTS = 4


@dataclass
class _Sample:
    prompt: str
    seed: int


@dataclass
class _Output:
    frames: np.ndarray
    latents: torch.Tensor
    wall_s: float
    transformer_s: float
    macs: float
    calls: list[int]
    per_call: list[float]
    mask: np.ndarray | None = None


@dataclass
class _Timer:
    """Seconds spent inside the transformer's forward (hooks included)."""

    total: float = 0.0
    _start: list[float] = field(default_factory=list)

    def install(self, transformer: torch.nn.Module) -> list[Any]:
        def pre(module: torch.nn.Module, args: tuple) -> None:
            self._start.append(time.perf_counter())

        def post(module: torch.nn.Module, args: tuple, output: Any) -> None:
            self.total += time.perf_counter() - self._start.pop()

        return [transformer.register_forward_pre_hook(pre), transformer.register_forward_hook(post)]


def _prompts(prompts: list[str] | str | Path | None) -> list[str]:
    if prompts is None:
        from calibration.zoo.data import heldout_prompts

        return heldout_prompts()[:_DEFAULT_PROMPTS]
    if isinstance(prompts, (str, Path)):
        path = Path(prompts)
        if not path.is_file():
            raise InputError(f"--prompts {path}: no such file (one prompt per line)")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if not lines:
            raise InputError(f"--prompts {path}: the file holds no prompt (one per line)")
        return lines
    if not prompts:
        raise InputError("no prompts given")
    return list(prompts)


def _calibration_prompts() -> list[str]:
    from calibration.zoo.data import training_prompts

    return training_prompts()[:2]


def _seeds(seeds: int | list[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise InputError(f"--seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    return [int(s) for s in seeds]


#: what a bench writes; `overwrite` removes exactly these (never the folder or anything else in it)
_OUTPUT_GLOBS = ("bench.json", "summary.md", "*.png")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise InputError(f"output folder {out_dir} exists and is not empty; pass --overwrite or choose another --out")
        for pattern in _OUTPUT_GLOBS:
            for old in out_dir.glob(pattern):
                old.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _load_policy(policy_path: str | Path | None, transformer: torch.nn.Module) -> Policy | None:
    if policy_path is None:
        return None
    path = Path(policy_path)
    if not path.is_file():
        raise InputError(f"--policy {path}: no such file; make one with `sencache-calibrate export`")
    return Policy.load(path, model_fingerprint=config_fingerprint(dict(transformer.config)))


def _generate(loaded: LoadedModel, sample: _Sample, kwargs: dict[str, Any], counter: BlockCounter,
              timer: _Timer, handle: Any) -> _Output:
    final: dict[str, torch.Tensor] = {}

    def keep_latents(pipe: Any, step: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        final["latents"] = tensors["latents"].detach().clone()
        return {}

    handle.reset()
    counter.reset()
    timer.total = 0.0
    start = time.perf_counter()
    out = loaded.pipe(prompt=sample.prompt, generator=torch.Generator().manual_seed(sample.seed), output_type="np",
                      callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"], **kwargs)
    wall = time.perf_counter() - start
    snap = counter.snapshot()
    mask = handle.computed_mask()
    return _Output(np.asarray(out.frames[0], dtype=np.float32), final["latents"].float().cpu(), wall, timer.total,
                   snap.total, snap.calls.tolist(), snap.per_call, None if mask is None else np.asarray(mask, bool))


def run_bench(
    model: str | LoadedModel,
    policy_path: str | Path | None,
    out_dir: str | Path,
    methods: list[str] | str | None = None,
    prompts: list[str] | str | Path | None = None,
    seeds: int | list[int] = 2,
    steps: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    knobs: dict[str, list[Any]] | None = None,
    fractions: tuple[float, ...] = MATCHED_FRACTIONS,
    store: str | Path | None = None,
) -> dict[str, Any]:
    """Benchmark `methods` (default: every one that can run) on `model`; write `out_dir`.

    `store` (a calibration store of this model) gives TeaCache's polynomial its fit; without
    it TeaCache fits on two full-compute calibration runs. Returns the `bench.json` object. Bad input raises `InputError` before any generation:
    an unknown method, a policy of another model, an existing non-empty `out_dir` without
    `overwrite`. A method whose peer library cannot run on this architecture is recorded under
    `unsupported` with the reason; any other failure of a requested method raises.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (not overwrite and any(out_dir.iterdir()))):
        _check_out_dir(out_dir, overwrite)  # refuses before the model is loaded
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    transformer = loaded.pipe.transformer
    adapter = adapter_for(transformer)
    policy = _load_policy(policy_path, transformer)
    if store is not None and not Path(store).is_file():
        raise InputError(f"--db {store}: no calibration store there; collect one with `sencache-calibrate collect`")
    names = resolve_methods(methods, have_policy=policy is not None)
    for name in knobs or {}:
        if name not in METHODS:
            raise InputError(f"knobs given for unknown method {name!r}; known methods: {', '.join(METHODS)}")
    prompt_list = _prompts(prompts)
    samples = [_Sample(p, s) for p in prompt_list for s in _seeds(seeds)]
    kwargs = loaded.call_kwargs(num_inference_steps=steps)
    kwargs.setdefault("num_inference_steps", DEFAULT_STEPS)
    _check_out_dir(out_dir, overwrite)
    loaded.pipe.set_progress_bar_config(disable=True)

    ctx = MethodContext(loaded.pipe, kwargs, policy=policy, calibration_prompts=_calibration_prompts(),
                        store=None if store is None else str(store))
    counter = BlockCounter(transformer, adapter.blocks(transformer))
    timer = _Timer()
    timer_handles = timer.install(transformer)
    fidelity = report.fidelity_scorer(prompt_list)
    rows: list[dict[str, Any]] = []
    unsupported: dict[str, str] = {}
    preparation: dict[str, Any] = {}
    keep: dict[tuple[str, Any], np.ndarray] = {}
    reference: list[_Output] = []
    runtime_log = logging.getLogger("sencache")
    runtime_level = runtime_log.level
    runtime_log.setLevel(max(runtime_level, logging.WARNING))  # its per-call summary: the bench keeps the masks
    try:
        plans = []
        for name in names:
            method = METHODS[name]
            try:
                prepared, note = method.setup(ctx)
            except MethodUnsupported as exc:
                unsupported[name] = str(exc)
                logger.warning("bench: %s cannot run on %s: %s", name, loaded.name, exc)
                continue
            preparation[name] = note
            sweep = list((knobs or {}).get(name) or method.sweep(ctx))
            plans.append((method, prepared, sweep))
        # one untimed full-compute call first: lazy initialisation must not be charged to `none`
        _generate(loaded, samples[0], kwargs, counter, timer, METHODS["none"].apply(loaded.pipe, None))
        total = sum(len(sweep) for _, _, sweep in plans) * len(samples)
        bar = report.progress_bar(total, progress)
        for method, prepared, sweep in plans:
            for knob in sweep:
                try:
                    handle = method.apply(loaded.pipe, knob, **prepared)
                except MethodUnsupported as exc:
                    unsupported[method.name] = str(exc)
                    logger.warning("bench: %s cannot run on %s: %s", method.name, loaded.name, exc)
                    bar.update(len(samples) * (len(sweep) - sweep.index(knob)))
                    break
                outputs = []
                try:
                    for sample in samples:
                        bar.set_description(f"{method.name} {knob}")
                        outputs.append(_generate(loaded, sample, kwargs, counter, timer, handle))
                        bar.update(1)
                finally:
                    handle.remove()
                if method.name == "none":
                    reference = outputs
                keep[(method.name, knob)] = outputs[0].frames
                rows.append(report.score_row(method.name, knob, handle.config, samples, outputs, reference, fidelity))
        bar.close()
    finally:
        runtime_log.setLevel(runtime_level)
        counter.remove()
        for h in timer_handles:
            h.remove()

    result = {
        "format": "sencache-bench",
        "version": 1,
        "model": {"name": loaded.name, "class": type(transformer).__name__,
                  "fingerprint": config_fingerprint(dict(transformer.config)),
                  "blocks": len(adapter.blocks(transformer))},
        "policy": None if policy is None else policy.source,
        "call_args": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))},
        "prompts": prompt_list,
        "seeds": sorted({s.seed for s in samples}),
        "device": str(transformer.device),
        "nfe_measure": "block-stack Linear MACs that ran / those of full compute, same prompt and seed",
        "methods": {name: METHODS[name].knob_meaning for name in names},
        "preparation": preparation,
        "unsupported": unsupported,
        "results": rows,
        "matched": report.matched(rows, fractions),
    }
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    report.write_plots(result, keep, out_dir)
    (out_dir / "summary.md").write_text(report.summary_markdown(result))
    logger.info("bench: wrote %s", out_dir)
    return result
