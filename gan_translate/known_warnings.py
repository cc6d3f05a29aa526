"""Third-party messages every run printed and no user can act on, silenced at the entry points.

Only exact, known messages are filtered; everything else still shows.
"""

from __future__ import annotations

import logging
import warnings

# Lightning 2.6 builds torch's deprecated LeafSpec on every logged step (torch 2.14 FutureWarning).
_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
# Lightning's advertisement for its cloud logger, printed at every fit, and its note that our
# ParameterSummary replaces its default model summary.
_LOG_PREFIXES = ("💡 Tip: For seamless cloud logging", "Trainer already configured with model summary callbacks")


class _DropKnownMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LOG_PREFIXES)


def silence_known_warnings() -> None:
    for message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownMessages) for f in logger.filters):
            logger.addFilter(_DropKnownMessages())
