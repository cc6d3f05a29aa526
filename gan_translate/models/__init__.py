"""LightningModules. Models know nothing of Hydra: they receive networks (or factories) and losses."""

from gan_translate.models.base import GANModule
from gan_translate.models.pix2pix import Pix2Pix

__all__ = ["GANModule", "Pix2Pix"]
