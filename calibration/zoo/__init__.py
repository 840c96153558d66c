"""The toy model zoo: small trained text-to-video pipelines of the real diffusers classes."""

from calibration.zoo.registry import TINY_MODELS, TOY_MODELS, zoo_folder

__all__ = ["TINY_MODELS", "TOY_MODELS", "zoo_folder"]
