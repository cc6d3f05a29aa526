"""gan_translate: GAN image-to-image translation (pix2pix, CycleGAN) on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

# Loaded on first use, so `import gan_translate` (and the CLIs' --help) stays fast: torch and Lightning
# are imported only when a public class is touched.
_PUBLIC = {
    "Translator": "gan_translate.translator",
    "Pix2Pix": "gan_translate.models",
    "CycleGAN": "gan_translate.models",
}
__all__ = ["CycleGAN", "Pix2Pix", "Translator", "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'gan_translate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
