"""A checkpoint holding a pickled Python object is refused, without running its code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gan_translate.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint


class Settings:
    """Any user class: torch.save pickles its instances by reference to this module."""

    def __init__(self) -> None:
        self.lr = 2e-4


class Touches:
    """Unpickling this calls Path.touch: a harmless stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def our_layout(config) -> dict:
    """Shaped like a gan_translate checkpoint, so only the pickled object can be the reason to refuse it."""
    return {"state_dict": {"w": torch.zeros(2)}, "gan_translate": {"config": config, "model_class": "x"}}


def test_custom_class_object_is_refused(tmp_path):
    path = tmp_path / "settings.ckpt"
    torch.save(our_layout({"model": Settings()}), path)
    with pytest.raises(CheckpointError, match=r"settings\.ckpt holds a pickled Python object \(.*Settings\).*refused"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="Settings"):
        model_from_checkpoint(path)


def test_pickled_code_does_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "touches.ckpt"
    torch.save(our_layout({"model": Touches(marker)}), path)
    with pytest.raises(CheckpointError, match=r"touches\.ckpt holds a pickled Python object"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what a plain load would do: the code runs
    assert marker.exists()
