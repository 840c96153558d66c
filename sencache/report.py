"""What the cache did in the last pipeline call: per sample, per step, and why.

Peers give no statistics, so users only learn that a cache was silently off from a counter.
Every SenCache call can say how many steps each sample computed, with the score and the
threshold that decided each step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

__all__ = ["NOT_RUN", "RunReport"]

#: the reason of a step the model never saw (another expert ran it, or the call stopped)
NOT_RUN = "not run"


@dataclass
class RunReport:
    """The last call's decisions.

    Attributes:
        computed: bool [samples, steps]: True where the sample ran the block stack.
        scores: float [samples, steps]: the rule's score S_i (NaN where the step was not scored:
            first step, warm-up and final zones).
        thresholds: float [steps]: ε(p_i) at each step.
        reasons: [samples][steps] why each decision was taken ("first", "warmup", "final",
            "score", "max_skips" for computed steps; "skipped" otherwise).
        timesteps: float [steps]: the timestep of each step, in the model's units.
        block_rows: per cache context, the number of rows that went through the block stack.
        operating_point: the name of the operating point in use.
    """

    computed: np.ndarray
    scores: np.ndarray
    thresholds: np.ndarray
    reasons: list[list[str]]
    timesteps: np.ndarray
    block_rows: dict[str, int] = field(default_factory=dict)
    operating_point: str = ""

    @classmethod
    def combine(cls, reports: list[RunReport]) -> RunReport:
        """One report of a call whose steps were run by several models (Wan 2.2's two experts).

        Each step is taken from the report that ran it (its reason is not "not run"); block rows
        are summed per context.
        """
        first = reports[0]
        computed, scores = first.computed.copy(), first.scores.copy()
        thresholds, timesteps = first.thresholds.copy(), first.timesteps.copy()
        reasons = [list(row) for row in first.reasons]
        block_rows = dict(first.block_rows)
        for other in reports[1:]:
            if other.computed.shape != computed.shape:
                continue
            for i in range(computed.shape[1]):
                if all(row[i] == NOT_RUN for row in reasons) and any(row[i] != NOT_RUN for row in other.reasons):
                    computed[:, i], scores[:, i] = other.computed[:, i], other.scores[:, i]
                    thresholds[i], timesteps[i] = other.thresholds[i], other.timesteps[i]
                    for b, row in enumerate(reasons):
                        row[i] = other.reasons[b][i]
            for k, v in other.block_rows.items():
                block_rows[k] = block_rows.get(k, 0) + v
        return cls(computed, scores, thresholds, reasons, timesteps, block_rows, first.operating_point)

    @property
    def num_samples(self) -> int:
        return int(self.computed.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.computed.shape[1])

    @property
    def nfe_per_sample(self) -> np.ndarray:
        """Steps at which each sample ran the block stack."""
        return self.computed.sum(axis=1)

    @property
    def nfe_fraction(self) -> np.ndarray:
        """Fraction of steps each sample computed."""
        return self.nfe_per_sample / max(self.num_steps, 1)

    def summary(self) -> str:
        """One line: steps computed (per sample when they differ) and why steps were computed."""
        nfe = self.nfe_per_sample
        n = self.num_steps
        mean = float(nfe.mean()) if nfe.size else 0.0
        if nfe.size and nfe.min() != nfe.max():
            per = ", ".join(str(int(v)) for v in nfe)
            head = f"computed {mean:.1f}/{n} steps on average ({mean / n:.0%}; per sample: {per})"
        else:
            head = f"computed {int(mean)}/{n} steps ({mean / max(n, 1):.0%})"
        why = Counter(r for row in self.reasons for r in row if r not in ("skipped", NOT_RUN))
        detail = ", ".join(f"{k} {v}" for k, v in sorted(why.items()))
        speed = n / mean if mean else float("inf")
        point = f" at operating point {self.operating_point!r}" if self.operating_point else ""
        return f"SenCache: {head}{point}, ideal block-stack speedup {speed:.2f}x [computed because: {detail}]"
