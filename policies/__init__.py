"""The SenCache policy file format: dataclasses, load/save/validate, epsilon interpolation.

```python
from policies import Policy, config_fingerprint

policy = Policy.load("policies/toy-wan.json", model_fingerprint=config_fingerprint(cfg))
point = policy.operating_point(speedup=2.0)      # or operating_point("fast"), or the default
eps = point.eps(step / (num_steps - 1))          # ε at a step position
j_x, j_t = policy.sensitivity.interpolate(t_ref)
```

Stdlib and numpy only: the runtime imports this without the calibration stack.
"""

from policies.errors import InputError, PolicyError, SenCacheError
from policies.fingerprint import config_fingerprint
from policies.model import ModelInfo, Predictor, SchedulerInfo
from policies.operating import OperatingPoint
from policies.paper import constant_policy, paper_policy
from policies.policy import FORMAT, VERSION, Policy
from policies.schedule import StaticSchedule, evenly_spaced
from policies.tables import TWO_LEVEL_GAP, EpsSchedule, SensitivityTable

__all__ = [
    "FORMAT",
    "TWO_LEVEL_GAP",
    "VERSION",
    "EpsSchedule",
    "InputError",
    "ModelInfo",
    "OperatingPoint",
    "Policy",
    "PolicyError",
    "Predictor",
    "SchedulerInfo",
    "SenCacheError",
    "SensitivityTable",
    "StaticSchedule",
    "config_fingerprint",
    "constant_policy",
    "evenly_spaced",
    "paper_policy",
]
