"""SenCache runtime: apply a sensitivity-aware caching policy to a diffusers video pipeline.

    import sencache
    from policies import Policy

    handle = sencache.apply(pipe, Policy.load("policies/toy-wan.json"))
    video = pipe(prompt).frames
    print(handle.report().summary())
    sencache.remove(pipe)

Imports neither scikit-learn, optuna, duckdb nor matplotlib: inference loads a policy and applies it.
"""

from sencache.adapters import ADAPTERS, adapter_for
from sencache.api import SenCacheConfig, SenCacheHandle, apply, remove, rule_params
from sencache.report import RunReport
from sencache.rule import RuleParams, decide

__all__ = ["ADAPTERS", "RuleParams", "RunReport", "SenCacheConfig", "SenCacheHandle", "adapter_for", "apply", "decide", "remove", "rule_params"]
