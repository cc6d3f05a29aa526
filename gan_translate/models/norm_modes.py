"""Batch norm at validation and test time: ``model.test_batch_stats``.

false: running statistics (``eval()`` as usual). true: each batch's own statistics, as the reference
pix2pix test script does (it never calls ``eval()``); its batch-size-1 paper results rely on it. Used alike
by validation, sample grids (``evaluating()``), predict and evaluate.

A mixin for LightningModules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gan_translate.networks.layers import use_batch_statistics


class EvalNormMode:
    test_batch_stats: bool = False
    _restore_norm: Callable[[], None] | None = None

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """eval() with the configured batch-norm behaviour, then back to the previous mode."""
        was_training = self.training
        self.eval()
        restore = use_batch_statistics(self) if self.test_batch_stats else None
        try:
            yield
        finally:
            if restore:
                restore()
            self.train(was_training)

    # Lightning switches to eval() around validation; these hooks apply the same choice there.
    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        if self.test_batch_stats:
            self._restore_norm = use_batch_statistics(self)

    def on_validation_model_train(self) -> None:
        if self._restore_norm:
            self._restore_norm()
            self._restore_norm = None
        super().on_validation_model_train()
