"""Networks know nothing of Lightning or Hydra: plain ``nn.Module``s with the papers' names."""

from gan_translate.networks.discriminators import NLayerDiscriminator, PixelDiscriminator
from gan_translate.networks.generators import (
    ResnetBlock,
    ResnetGenerator,
    UnetGenerator,
    UnetSkipConnectionBlock,
)
from gan_translate.networks.layers import init_weights, norm_layer
from gan_translate.networks.vgg import VGGFeatures

__all__ = [
    "NLayerDiscriminator",
    "PixelDiscriminator",
    "ResnetBlock",
    "ResnetGenerator",
    "UnetGenerator",
    "UnetSkipConnectionBlock",
    "VGGFeatures",
    "init_weights",
    "norm_layer",
]
