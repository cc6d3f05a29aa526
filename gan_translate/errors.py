"""The base of the errors in what a user gave (a config value, a data folder, a checkpoint, an image size), and
how the entry points report them.

Their messages say what to change, so an entry point prints the message alone: a traceback would only bury it.
Each concrete error also keeps a builtin base (``ValueError`` ...) for callers that catch those. Nothing here
imports Hydra at module level: the data, networks and models stay free of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UsageError(Exception):
    """An error in the user's input, reported by its message alone."""


@contextmanager
def usage_errors_as_messages() -> Iterator[None]:
    """Around an entry point's task: a ``UsageError`` leaves as Hydra's ``CompactHydraException``, which Hydra
    prints as its message, without a traceback (``HYDRA_FULL_ERROR=1`` still shows it). So does a required value
    left out (``ckpt_path: ???``), which omegaconf reports where it is first read."""
    from hydra.errors import CompactHydraException
    from omegaconf.errors import MissingMandatoryValue

    try:
        yield
    except UsageError as error:
        raise CompactHydraException(f"{type(error).__name__}: {error}") from error
    except MissingMandatoryValue as error:
        # from None: Hydra would print omegaconf's own message (the cause) after this one.
        raise CompactHydraException(f"required value not given: {error.full_key} (pass {error.full_key}=...)") from None
