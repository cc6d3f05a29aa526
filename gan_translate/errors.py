"""The base of the errors in what a user gave: a config value, a data folder, a checkpoint, an image size.

Their messages say what to change. Hydra's entry points print a ``CompactHydraException`` as its message alone,
so these errors come without a traceback that would only bury that message (train.log still records the type).
Each concrete error also keeps a builtin base (``ValueError`` ...) for callers that catch those.
"""

from __future__ import annotations

from hydra.errors import CompactHydraException


class UsageError(CompactHydraException):
    """An error in the user's input, reported by its message alone."""
