"""Data: datasets on disk and procedural ones, paired transforms, and the Lightning datamodules."""

from gan_translate.data.datamodule import (
    AlignedDataModule,
    PairedFoldersDataModule,
    SyntheticFacadesDataModule,
    SyntheticShapesDataModule,
    TranslationDataModule,
    UnalignedDataModule,
)
from gan_translate.data.datasets import (
    AlignedDataset,
    DataError,
    PairedFoldersDataset,
    UnalignedDataset,
)
from gan_translate.data.synthetic import SyntheticFacades, SyntheticShapes

__all__ = [
    "AlignedDataModule",
    "AlignedDataset",
    "DataError",
    "PairedFoldersDataModule",
    "PairedFoldersDataset",
    "SyntheticFacades",
    "SyntheticFacadesDataModule",
    "SyntheticShapes",
    "SyntheticShapesDataModule",
    "TranslationDataModule",
    "UnalignedDataModule",
    "UnalignedDataset",
]
