"""Offline stages: collect, fit, export, bench; the baselines; the toy model zoo."""

__all__: list[str] = []
