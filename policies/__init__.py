"""The SenCache policy file format: dataclasses, load/save/validate, epsilon interpolation."""

from policies.errors import InputError, PolicyError, SenCacheError

__all__ = ["InputError", "PolicyError", "SenCacheError"]
