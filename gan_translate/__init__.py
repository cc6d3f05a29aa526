"""gan_translate: GAN image-to-image translation (pix2pix, CycleGAN) on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
