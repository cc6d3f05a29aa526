"""Annotations for constructor parameters whose config values must lie in a range.

``gan_translate.config.check_value_types`` reads them from a ``_target_``'s signature and refuses an out-of-range
value before anything is built, naming the key: ``generator.ngf=0`` was a conv error in the first step, and
``loss.lambda_l1=-1`` trained towards the wrong target without a word. Plain ``typing.Annotated`` with
annotated-types' bounds, so user classes can use them (or their own ``Annotated[int, Ge(2)]``) too.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge

PositiveInt = Annotated[int, Ge(1)]  # channels, features, batch sizes: counts that must not be 0
NonNegativeInt = Annotated[int, Ge(0)]  # blocks, layers, workers, pool sizes
NonNegativeFloat = Annotated[float, Ge(0)]  # loss weights (0 turns a term off)
