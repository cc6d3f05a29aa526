"""LightningModules. Models know nothing of Hydra: they receive networks (or factories) and losses."""

from gan_translate.models.base import GANModule
from gan_translate.models.cyclegan import CycleGAN
from gan_translate.models.image_pool import ImagePool
from gan_translate.models.pix2pix import Pix2Pix

__all__ = ["CycleGAN", "GANModule", "ImagePool", "Pix2Pix"]
