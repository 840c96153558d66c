"""The project's error types, at the bottom of the import graph so every layer can raise them.

`InputError` means the caller gave something unusable (a file, a flag, a model); the CLI maps it
to exit code 2. Any other `SenCacheError` is a failure of the work itself (exit code 1).
"""

from __future__ import annotations

__all__ = ["InputError", "PolicyError", "SenCacheError"]


class SenCacheError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class InputError(SenCacheError, ValueError):
    """Bad input from the caller: the message says what, where, and the command that fixes it."""


class PolicyError(InputError):
    """A policy file or dict that cannot be used: names the file, the field and the reason."""
